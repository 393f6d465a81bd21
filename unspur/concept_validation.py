"""CFT concept validation (METHODS.md 1.2): keep the concepts a segmenter actually grounds.

On P images per class, each concept gets an *occurrence rate* (fraction of the class's usable
validation images where its mask is non-empty) and a *coverage* (mean IoU of its mask with the
image's object mask, over the images where it occurs; where the table has no object mask the
reference is the union of all the class's concept masks in that image). A concept is kept when
occurrence >= ``min_occurrence`` (paper: 15%) and coverage >= ``min_coverage`` (paper: 20%).
Error rows (unreadable images) count for neither numerator nor denominator.

The validated bank is the concept bank document (``unspur.concept_bank`` format) with the
statistics added to every validated entry, failing entries moved to ``dropped`` (reason
``validation``), and a top-level ``validation`` section with the thresholds and counts.
"""

from __future__ import annotations

import copy
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from unspur.masks import decode, iou

__all__ = [
    "ConceptStats",
    "concept_statistics",
    "decide",
    "select_validation_images",
    "validated_bank",
]


@dataclass
class ConceptStats:
    """Validation statistics of one (class, concept)."""

    class_name: str
    concept: str
    n_images: int
    n_detected: int
    occurrence: float
    coverage: float
    kept: bool = False
    detail: str = ""


def select_validation_images(
    ids: Sequence[str], classes: Sequence[str], per_class: int, wanted: Iterable[str] | None = None
) -> dict[str, list[str]]:
    """Up to ``per_class`` image ids per class, chosen by a hash of the id (deterministic, order-free).

    ``ids[i]`` has class ``classes[i]``; repeated ids count once; ``wanted`` limits the classes.
    """
    wanted_set = None if wanted is None else set(wanted)
    by_class: dict[str, set[str]] = defaultdict(set)
    for image_id, cls in zip(ids, classes, strict=True):
        if wanted_set is None or cls in wanted_set:
            by_class[cls].add(image_id)

    def key(image_id: str) -> str:
        return hashlib.sha1(image_id.encode("utf-8")).hexdigest()

    return {cls: sorted(members, key=key)[:per_class] for cls, members in sorted(by_class.items())}


def _mask(rle: Any) -> np.ndarray:
    return rle if isinstance(rle, np.ndarray) else decode(rle)


def concept_statistics(
    rows: Iterable[Mapping[str, Any]], object_masks: Mapping[str, Any] | None = None
) -> list[ConceptStats]:
    """Occurrence and coverage per (class, concept) from mask rows.

    ``rows``: mask rows (``image_id``, ``class_name``, ``concept``, ``status``, ``rle`` as a COCO RLE
    or an (H, W) bool array). ``object_masks``: image_id -> object mask (RLE or array); images
    missing from it use the union of their class's ok concept masks as the reference.
    """
    object_masks = object_masks or {}
    per_image: dict[tuple[str, str], dict[str, np.ndarray | None]] = defaultdict(dict)
    concepts: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        cls, concept, status = str(row["class_name"]), str(row["concept"]), row["status"]
        if not concept:
            continue
        if concept not in concepts[cls]:
            concepts[cls].append(concept)
        if status == "error":
            continue
        per_image[(cls, str(row["image_id"]))][concept] = _mask(row["rle"]) if status == "ok" else None
    n_images: dict[tuple[str, str], int] = defaultdict(int)
    detected: dict[tuple[str, str], list[float]] = defaultdict(list)
    for (cls, image_id), masks in per_image.items():
        found = [m for m in masks.values() if m is not None]
        if image_id in object_masks and object_masks[image_id] is not None:
            reference = _mask(object_masks[image_id])
        elif found:
            reference = np.logical_or.reduce(found)
        else:
            reference = None
        for concept, mask in masks.items():
            n_images[(cls, concept)] += 1
            if mask is not None and reference is not None:
                detected[(cls, concept)].append(iou(mask, reference))
    out = []
    for cls, names in concepts.items():
        for concept in names:
            n, ious = n_images[(cls, concept)], detected[(cls, concept)]
            out.append(
                ConceptStats(
                    cls,
                    concept,
                    n,
                    len(ious),
                    len(ious) / n if n else 0.0,
                    float(np.mean(ious)) if ious else 0.0,
                )
            )
    return out


def decide(stats: Sequence[ConceptStats], min_occurrence: float, min_coverage: float) -> list[ConceptStats]:
    """Mark each concept kept or not, with the failing test spelled out in ``detail``."""
    for s in stats:
        why = []
        if s.n_images == 0:
            why.append("no usable validation image")
        else:
            if s.occurrence < min_occurrence:
                why.append(f"occurrence {s.occurrence:.3f} < {min_occurrence}")
            if s.coverage < min_coverage:
                why.append(f"coverage {s.coverage:.3f} < {min_coverage}")
        s.kept = not why
        s.detail = "; ".join(why)
    return list(stats)


def _stat_fields(s: ConceptStats) -> dict[str, Any]:
    return {
        "occurrence": round(s.occurrence, 6),
        "coverage": round(s.coverage, 6),
        "n_images": s.n_images,
        "n_detected": s.n_detected,
    }


def validated_bank(
    bank: Mapping[str, Any], stats: Sequence[ConceptStats], params: Mapping[str, Any]
) -> dict[str, Any]:
    """A copy of the bank document with validation applied (see the module docstring).

    Only entries with statistics are touched; a validated entry gains ``validation``; a failing
    one moves from ``concepts`` to ``dropped`` with ``reason: validation`` and the failed test.
    """
    doc = copy.deepcopy(dict(bank))
    by_key = {(s.class_name, s.concept): s for s in stats}
    doc.setdefault("dropped", {})
    for cls, entries in doc.get("concepts", {}).items():
        kept = []
        for entry in entries:
            s = by_key.get((cls, entry["concept"]))
            if s is None:
                kept.append(entry)
                continue
            entry = {**entry, "validation": _stat_fields(s)}
            if s.kept:
                kept.append(entry)
            else:
                doc["dropped"].setdefault(cls, []).append(
                    {**entry, "reason": "validation", "detail": s.detail}
                )
        doc["concepts"][cls] = kept
    doc["validation"] = {
        **dict(params),
        "kept": sum(s.kept for s in stats),
        "dropped": sum(not s.kept for s in stats),
        "concepts": [asdict(s) for s in stats],
    }
    return doc
