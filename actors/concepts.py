"""Concept proposal: prompts, answer parsing, candidate merging and the Label-free CBM filters.

Pure row functions (no ray, no model loading) used by ``workflows/concepts/job.py`` and by the
proposer backends in :mod:`unspur.actors.proposers`.

Two prompt families, each versioned (bump the version when a prompt changes; the cache and
the bank's provenance carry it):

- ``concept`` (:data:`PROMPT_VERSION`): the Label-free CBM prompts (Oikarinen et al., ICLR
  2023) restated as two-shot chat messages, one per kind: ``important`` (features that
  recognise the class), ``superclass``, ``around`` (things seen around it).
- ``spurious`` (:data:`SPURIOUS_PROMPT_VERSION`): StarFT-style spurious descriptions, asked
  as caption templates holding the placeholder ``{class}``, one pool per kind
  (``background``, ``texture``, ``resolution``, ...). Class-agnostic: one prompt per kind.

Answers are requested as a JSON list of short strings (structured decoding where the backend
has it); :func:`parse_answer` also takes bulleted lists and turns anything else into an error
with the raw text kept.

Filters, in the published order (:func:`filter_concepts`): longer than ``max_length``
characters; an exact class name (with a/an/the); cosine similarity to ANY class name
>= ``class_similarity``; near-duplicates (similarity >= ``duplicate_similarity`` within one
class and kind: the one with the higher summed similarity to the rest is dropped). Every drop
keeps its reason.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unspur.concept_bank import PLACEHOLDER
from unspur.text_similarity import TextEncoder, build_text_encoder, cosine_matrix

__all__ = [
    "PROMPT_VERSION",
    "SPURIOUS_PROMPT_VERSION",
    "CONCEPT_PROMPTS",
    "SPURIOUS_KIND_HINTS",
    "SYSTEM_PROMPT",
    "PLACEHOLDER",
    "ANSWER_SCHEMA",
    "ParsedAnswer",
    "build_messages",
    "prompt_version",
    "parse_answer",
    "normalize_class_name",
    "clean_concept",
    "clean_template",
    "collect_candidates",
    "filter_concepts",
    "filter_templates",
    "ConceptFilter",
]

PROMPT_VERSION = "lfcbm-chat-v1"
SPURIOUS_PROMPT_VERSION = "starft-templates-v1"

SYSTEM_PROMPT = (
    "You are an expert in visual recognition. Answer with a JSON list of short strings "
    "(a few words each) and nothing else."
)

#: kind -> (question with {name}, two shots: (name, answer list)). Label-free CBM's prompts.
CONCEPT_PROMPTS: dict[str, tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "important": (
        'List the most important features for recognizing something as a "{name}":',
        (
            (
                "goldfish",
                (
                    "bright orange color",
                    "a small, round body",
                    "a long, flowing tail",
                    "a small mouth",
                    "orange fins",
                ),
            ),
            (
                "beer glass",
                (
                    "a tall, cylindrical shape",
                    "clear or translucent color",
                    "opening at the top",
                    "a sturdy base",
                    "a handle",
                ),
            ),
        ),
    ),
    "superclass": (
        'Give superclasses for the word "{name}":',
        (("tench", ("fish", "vertebrate", "animal")), ("beer glass", ("glass", "container", "object"))),
    ),
    "around": (
        'List the things most commonly seen around a "{name}":',
        (
            ("tench", ("a pond", "fish", "a net", "a rod", "a reel", "a hook", "bait")),
            ("beer glass", ("beer", "a bar", "a coaster", "a napkin", "a straw", "a lime", "a person")),
        ),
    ),
}

#: spurious kind -> what the kind means (unknown kinds are described by their own name)
SPURIOUS_KIND_HINTS: dict[str, str] = {
    "background": "the background, place or scene the object is photographed in",
    "texture": "the texture, pattern, colour or material of the object",
    "resolution": "the image quality: resolution, blur, noise, compression",
}

_SPURIOUS_QUESTION = (
    'List possible spurious correlations of the kind "{kind}" ({hint}) that an image classifier '
    "may rely on, as caption templates in which {placeholder} stands for the class name:"
)
_SPURIOUS_SHOTS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "weather",
        "the weather or lighting of the scene",
        (
            "a photo of a {class} in the rain.",
            "a photo of a {class} on a foggy day.",
            "a photo of a {class} at night.",
        ),
    ),
    (
        "color",
        "the colour rendition of the photo",
        (
            "a black and white photo of a {class}.",
            "a sepia photo of a {class}.",
            "an overexposed photo of a {class}.",
        ),
    ),
)

#: JSON schema of an answer, for structured decoding (vLLM ``structured_outputs``)
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {"type": "string", "minLength": 1, "maxLength": 120},
    "maxItems": 30,
}


def prompt_version(family: str) -> str:
    """The version string of prompt ``family`` (``concept`` or ``spurious``)."""
    versions = {"concept": PROMPT_VERSION, "spurious": SPURIOUS_PROMPT_VERSION}
    if family not in versions:
        raise ValueError(f"unknown prompt family {family!r}; choose one of {sorted(versions)}")
    return versions[family]


def build_messages(family: str, kind: str, class_name: str = "") -> list[dict[str, str]]:
    """Two-shot chat messages (OpenAI format) asking for one class's ``kind`` concepts.

    ``family="concept"``: ``kind`` in :data:`CONCEPT_PROMPTS`, ``class_name`` required.
    ``family="spurious"``: any ``kind`` (a template pool), ``class_name`` ignored.
    """
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    if family == "concept":
        if kind not in CONCEPT_PROMPTS:
            raise ValueError(f"unknown concept kind {kind!r}; choose one of {sorted(CONCEPT_PROMPTS)}")
        if not class_name:
            raise ValueError("a concept prompt needs a class name")
        question, shots = CONCEPT_PROMPTS[kind]
        for shot_name, answer in shots:
            messages.append({"role": "user", "content": question.format(name=shot_name)})
            messages.append({"role": "assistant", "content": json.dumps(list(answer))})
        messages.append({"role": "user", "content": question.format(name=class_name)})
    elif family == "spurious":
        for shot_kind, hint, answer in _SPURIOUS_SHOTS:
            messages.append({"role": "user", "content": _spurious_question(shot_kind, hint)})
            messages.append({"role": "assistant", "content": json.dumps(list(answer))})
        hint = SPURIOUS_KIND_HINTS.get(kind, kind.replace("_", " "))
        messages.append({"role": "user", "content": _spurious_question(kind, hint)})
    else:
        prompt_version(family)  # raises with the allowed names
    return messages


def _spurious_question(kind: str, hint: str) -> str:
    return _SPURIOUS_QUESTION.format(kind=kind, hint=hint, placeholder=PLACEHOLDER)


# --- parsing ---------------------------------------------------------------------------

_BULLET = re.compile(r"^\s*(?:[-*\u2022\u00b7\u2013]|\d{1,3}[.)])\s*(.+?)\s*$")
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*|\s*```\s*$")


@dataclass
class ParsedAnswer:
    """``status``: ok (items found) | empty (a valid, empty answer) | error (unparseable).

    ``items``: (text, score) pairs, score 1.0 unless the answer gave one; ``fmt``: json |
    bullets | ""; ``error``: why the answer was rejected (the raw text stays with the row).
    """

    status: str
    items: list[tuple[str, float]] = field(default_factory=list)
    fmt: str = ""
    error: str = ""


def parse_answer(text: str | None) -> ParsedAnswer:
    """Parse a model's answer: a JSON list (of strings or {concept, score}), else bullet lines."""
    if text is None or not str(text).strip():
        return ParsedAnswer("error", error="the model returned no text")
    body = _FENCE.sub("", str(text).strip())
    value, json_error = _load_json_list(body)
    if value is not None:
        items, item_error = _json_items(value)
        if item_error:
            return ParsedAnswer("error", fmt="json", error=item_error)
        return ParsedAnswer("ok" if items else "empty", items, "json")
    bullets = [m.group(1) for m in map(_BULLET.match, body.splitlines()) if m]
    items = [(b, 1.0) for b in bullets if b.strip()]
    if items:
        return ParsedAnswer("ok", items, "bullets")
    return ParsedAnswer("error", error=f"not a JSON list ({json_error}) and no bullet lines")


def _load_json_list(body: str) -> tuple[list | None, str]:
    candidates = [body]
    start, end = body.find("["), body.rfind("]")
    if 0 <= start < end:
        candidates.append(body[start : end + 1])
    error = "no JSON found"
    for cand in candidates:
        try:
            value = json.loads(cand)
        except json.JSONDecodeError as err:
            error = f"invalid JSON: {err.msg} at char {err.pos}"
            continue
        if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
            value = next(iter(value.values()))
        if isinstance(value, list):
            return value, ""
        error = f"JSON is a {type(value).__name__}, not a list"
    return None, error


def _json_items(value: list) -> tuple[list[tuple[str, float]], str]:
    items = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            text, score = item, 1.0
        elif isinstance(item, dict) and isinstance(item.get("concept"), str):
            text, score = item["concept"], item.get("score", 1.0)
            if not isinstance(score, (int, float)) or isinstance(score, bool):
                return [], f"item {i} has a non-numeric score {score!r}"
        else:
            return [], f"item {i} is {type(item).__name__} {item!r}, expected a string"
        if text.strip():
            items.append((text, float(score)))
    return items, ""


# --- normalisation ---------------------------------------------------------------------


def normalize_class_name(name: str) -> str:
    """NFC-normalise, strip, collapse whitespace, underscores -> spaces (WordNet style)."""
    text = unicodedata.normalize("NFC", str(name)).replace("_", " ")
    return " ".join(text.split())


def clean_concept(text: str) -> str:
    """Lower-case, NFC, strip quotes / bullets / trailing punctuation, collapse whitespace."""
    text = unicodedata.normalize("NFC", text).replace("_", " ").lower()
    text = " ".join(text.split())
    return text.strip(" \t\"'`*-\u2022.,;:!")


def clean_template(text: str) -> str:
    """NFC, strip surrounding quotes and whitespace, collapse whitespace (punctuation kept)."""
    text = " ".join(unicodedata.normalize("NFC", text).split())
    return text.strip(" \t\"'`")


# --- candidates ------------------------------------------------------------------------


def collect_candidates(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge parsed generation rows into unique candidates per (class_name, kind, text).

    Each row: ``family``, ``class_name``, ``kind``, ``status`` and ``items`` ((text, score)
    pairs), ``source``. A candidate's score is the summed item score over the rows of its
    (class, kind) that answered (status ok or empty), so 2 of 2 LLM samples -> 1.0 and an
    offline source keeps its own score. Output rows: family, class_name, kind, text, score,
    source, count (occurrences), in first-seen order.
    """
    answered: dict[tuple[str, str, str], int] = defaultdict(int)
    merged: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in rows:
        group = (row["family"], row["class_name"], row["kind"])
        if row["status"] in ("ok", "empty"):
            answered[group] += 1
        clean = clean_template if row["family"] == "spurious" else clean_concept
        for raw_text, score in row.get("items", []):
            text = clean(raw_text)
            if not text:
                continue
            key = (*group, text.lower())
            cand = merged.setdefault(
                key,
                {
                    "family": group[0],
                    "class_name": group[1],
                    "kind": group[2],
                    "text": text,
                    "score": 0.0,
                    "source": row["source"],
                    "count": 0,
                },
            )
            cand["score"] += score
            cand["count"] += 1
    for key, cand in merged.items():
        cand["score"] = round(min(1.0, cand["score"] / max(1, answered[key[:3]])), 4)
    return list(merged.values())


# --- filters ---------------------------------------------------------------------------


def _class_variants(class_names: Sequence[str]) -> dict[str, str]:
    variants = {}
    for name in class_names:
        base = normalize_class_name(name).lower()
        for article in ("", "a ", "an ", "the "):
            variants[article + base] = name
    return variants


def filter_concepts(
    candidates: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    encoder: TextEncoder,
    max_length: int = 30,
    class_similarity: float = 0.85,
    duplicate_similarity: float = 0.9,
) -> list[dict[str, Any]]:
    """Label-free CBM filters in order; returns the candidates with ``status`` and ``reason``.

    ``status`` is kept | dropped; ``reason`` one of too_long, class_name, similar_to_class,
    near_duplicate ("" when kept); ``detail`` says which class / concept and the similarity.
    Near-duplicates are looked for within one (class_name, kind).
    """
    out = [{**c, "status": "kept", "reason": "", "detail": ""} for c in candidates]
    variants = _class_variants(class_names)
    for c in out:
        if len(c["text"]) > max_length:
            _drop(c, "too_long", f"{len(c['text'])} > {max_length} characters")
        elif c["text"].lower() in variants:
            _drop(c, "class_name", f"is the class name {variants[c['text'].lower()]!r}")
    alive = [c for c in out if c["status"] == "kept"]
    if not alive:
        return out
    texts = sorted({c["text"] for c in alive})
    index = {t: i for i, t in enumerate(texts)}
    emb = encoder.encode(texts)
    to_class = cosine_matrix(emb, encoder.encode([normalize_class_name(n) for n in class_names]))
    for c in alive:
        sims = to_class[index[c["text"]]]
        best = int(np.argmax(sims))
        if sims[best] >= class_similarity:
            _drop(c, "similar_to_class", f"{class_names[best]!r} at {sims[best]:.3f} >= {class_similarity}")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in alive:
        if c["status"] == "kept":
            groups[(c["class_name"], c["kind"])].append(c)
    for members in groups.values():
        _drop_near_duplicates(members, emb[[index[c["text"]] for c in members]], duplicate_similarity)
    return out


def _drop(cand: dict[str, Any], reason: str, detail: str) -> None:
    cand["status"], cand["reason"], cand["detail"] = "dropped", reason, detail


def _drop_near_duplicates(members: list[dict[str, Any]], emb: np.ndarray, threshold: float) -> None:
    """Among pairs at cosine >= threshold drop the one with the higher summed similarity to the rest.

    ``emb``: (M, D) embeddings of ``members``. Pairs are visited from the most similar down;
    a pair whose member is already dropped is skipped; ties drop the later member.
    """
    if len(members) < 2:
        return
    sim = cosine_matrix(emb, emb)
    np.fill_diagonal(sim, 0.0)
    totals = sim.sum(axis=1)
    rows, cols = np.triu_indices(len(members), k=1)
    order = np.argsort(-sim[rows, cols], kind="stable")
    dropped: set[int] = set()
    for k in order:
        i, j = int(rows[k]), int(cols[k])
        if sim[i, j] < threshold:
            break
        if i in dropped or j in dropped:
            continue
        loser, keeper = (i, j) if totals[i] > totals[j] else (j, i)
        dropped.add(loser)
        _drop(
            members[loser],
            "near_duplicate",
            f"of {members[keeper]['text']!r} at {sim[i, j]:.3f} >= {threshold}",
        )


def filter_templates(
    candidates: Sequence[dict[str, Any]],
    class_names: Sequence[str],
    encoder: TextEncoder,
    max_length: int = 80,
    duplicate_similarity: float = 0.9,
) -> list[dict[str, Any]]:
    """Filters for spurious templates: exactly one ``{class}``; length; names no class; near-dups.

    Reasons: no_placeholder, too_long, class_name, near_duplicate (within one kind; compared
    with the placeholder read as "object").
    """
    out = [{**c, "status": "kept", "reason": "", "detail": ""} for c in candidates]
    names = [normalize_class_name(n).lower() for n in class_names]
    for c in out:
        count = c["text"].count(PLACEHOLDER)
        bare = c["text"].replace(PLACEHOLDER, " ").lower()
        named = [n for n in names if re.search(rf"\b{re.escape(n)}\b", bare)]
        if count != 1:
            _drop(c, "no_placeholder", f"has {count} {PLACEHOLDER} placeholders, needs exactly 1")
        elif len(c["text"]) > max_length:
            _drop(c, "too_long", f"{len(c['text'])} > {max_length} characters")
        elif named:
            _drop(c, "class_name", f"names the class {named[0]!r}")
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in out:
        if c["status"] == "kept":
            groups[c["kind"]].append(c)
    for members in groups.values():
        if len(members) > 1:
            emb = encoder.encode([c["text"].replace(PLACEHOLDER, "object") for c in members])
            _drop_near_duplicates(members, emb, duplicate_similarity)
    return out


class ConceptFilter:
    """Ray Data actor: filters candidate groups with one text encoder loaded in ``__init__``.

    Batch columns: ``family`` (concept | spurious) and ``candidates`` (a JSON list of candidate
    rows from :func:`collect_candidates`, one group per row, e.g. one class); returns the same
    rows with ``decisions`` (JSON list: each candidate with status / reason / detail).
    ``encoder``: kwargs of :func:`unspur.text_similarity.build_text_encoder`; ``filters``:
    ``ConceptFilterConfig`` fields.
    """

    def __init__(self, class_names: Sequence[str], encoder: dict[str, Any], filters: dict[str, Any]) -> None:
        self.class_names = list(class_names)
        self.encoder = build_text_encoder(**encoder)
        self.filters = dict(filters)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        decisions = []
        for family, payload in zip(batch["family"], batch["candidates"], strict=True):
            cands = json.loads(str(payload))
            if family == "spurious":
                out = filter_templates(
                    cands,
                    self.class_names,
                    self.encoder,
                    max_length=self.filters["template_max_length"],
                    duplicate_similarity=self.filters["duplicate_similarity"],
                )
            else:
                out = filter_concepts(
                    cands,
                    self.class_names,
                    self.encoder,
                    max_length=self.filters["max_length"],
                    class_similarity=self.filters["class_similarity"],
                    duplicate_similarity=self.filters["duplicate_similarity"],
                )
            decisions.append(json.dumps(out, ensure_ascii=False))
        return {**batch, "decisions": np.array(decisions, dtype=object)}
