"""A built-in bank of StarFT spurious caption templates, by kind, for runs without an LLM.

StarFT (METHODS.md 3) regularises with captions that describe a spurious attribute of the
image: its background, the object's texture, the photo's quality. The paper has an LLM list
them; this bank is a hand-written stand-in (about 20-30 templates per kind) so that the offline
concept backend (``wordnet``) fills the concept bank's ``spurious_templates`` too. Every
template holds the placeholder ``{class}`` exactly once; they go through the same template
filters as an LLM's answers (:func:`unspur.actors.concepts.filter_templates`).
"""

from __future__ import annotations

import json

from unspur.spurious_templates import SPURIOUS_TEMPLATES

__all__ = ["SPURIOUS_TEMPLATES", "offline_templates", "template_answer"]


def offline_templates(kind: str) -> tuple[str, ...]:
    """The built-in templates of ``kind`` (empty for a kind the bank does not hold)."""
    return SPURIOUS_TEMPLATES.get(kind, ())


def template_answer(kind: str) -> tuple[str, str]:
    """A proposer's answer for spurious ``kind``: (JSON list of ``{concept, score}``, reason if
    empty), the shape every offline source answers with."""
    items = [{"concept": t, "score": 1.0} for t in offline_templates(kind)]
    reason = (
        ""
        if items
        else f"the built-in template bank has no kind {kind!r} (it has {sorted(SPURIOUS_TEMPLATES)})"
    )
    return json.dumps(items, ensure_ascii=False), reason
