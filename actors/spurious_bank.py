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

__all__ = ["SPURIOUS_TEMPLATES", "offline_templates", "template_answer"]

#: kind -> caption templates (``{class}`` = the class name)
SPURIOUS_TEMPLATES: dict[str, tuple[str, ...]] = {
    "background": (
        "a photo of a {class} in the snow.",
        "a photo of a {class} on the beach.",
        "a photo of a {class} in the water.",
        "a photo of a {class} in a forest.",
        "a photo of a {class} in the desert.",
        "a photo of a {class} on a city street.",
        "a photo of a {class} in a grassy field.",
        "a photo of a {class} on a mountain.",
        "a photo of a {class} indoors, in a living room.",
        "a photo of a {class} in a kitchen.",
        "a photo of a {class} against a clear blue sky.",
        "a photo of a {class} under a cloudy sky.",
        "a photo of a {class} at sunset.",
        "a photo of a {class} in a parking lot.",
        "a photo of a {class} in a garden full of flowers.",
        "a photo of a {class} on a wooden table.",
        "a photo of a {class} in front of a brick wall.",
        "a photo of a {class} in a swamp.",
        "a photo of a {class} on a farm.",
        "a photo of a {class} in a crowded market.",
        "a photo of a {class} on a plain white background.",
        "a photo of a {class} in a cave.",
        "a photo of a {class} next to a lake.",
        "a photo of a {class} in a jungle.",
        "a photo of a {class} on a snowy road at night.",
    ),
    "texture": (
        "a striped {class}.",
        "a spotted {class}.",
        "a checkered {class}.",
        "a furry {class}.",
        "a metallic {class}.",
        "a wooden {class}.",
        "a plastic toy {class}.",
        "a {class} made of glass.",
        "a {class} made of stone.",
        "a knitted {class}.",
        "a paper origami {class}.",
        "a {class} covered in moss.",
        "a rusty {class}.",
        "a shiny golden {class}.",
        "a {class} with a polka dot pattern.",
        "a {class} with a camouflage pattern.",
        "a bright red {class}.",
        "a pink {class}.",
        "a {class} painted in rainbow colours.",
        "a muddy {class}.",
        "a {class} made of clay.",
        "a {class} with scales.",
        "a transparent {class}.",
        "a cracked {class}.",
        "a {class} with a zebra print.",
    ),
    "resolution": (
        "a blurry photo of a {class}.",
        "a low resolution photo of a {class}.",
        "a pixelated photo of a {class}.",
        "a noisy photo of a {class}.",
        "a grainy photo of a {class}.",
        "a jpeg-compressed photo of a {class}.",
        "an out-of-focus photo of a {class}.",
        "a motion-blurred photo of a {class}.",
        "a crisp 4k photo of a {class}.",
        "a sharp, detailed photo of a {class}.",
        "a dark, underexposed photo of a {class}.",
        "an overexposed photo of a {class}.",
        "a cropped photo of a {class}.",
        "a tiny thumbnail of a {class}.",
        "a photo of a {class} taken through a dirty window.",
        "a scanned print of a {class}.",
        "a photo of a {class} from a security camera.",
        "a photo of a {class} with lens flare.",
        "a photo of a {class} with chromatic aberration.",
        "a heavily sharpened photo of a {class}.",
        "a distorted fisheye photo of a {class}.",
    ),
}


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
