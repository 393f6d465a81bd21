"""Concept segmenters behind one predictor API, and the Ray Data callable that runs them.

The API follows segment-anything's ``SamPredictor``: ``set_image(image)`` encodes an image ONCE,
then ``predict(concepts)`` answers every concept prompt of that image from the cached encoding
and returns one :class:`ConceptMask` per concept, in order. Backends are registered by name in
:data:`SEGMENTERS` (``unspur.config.masks.SEGMENTERS``, the config vocabulary of
``segmenter.name``) together with their settings classes:

- ``grounded_sam``: GroundingDINO boxes (transformers) -> SAM box-prompted masks (actors/grounded_sam.py)
- ``clipseg``: text-prompted CLIPSeg (actors/clipseg.py)
- ``ground_truth``: masks a dataset already has, matched by head noun (actors/ground_truth.py)

:class:`SegmenterActor` is the plain callable Ray Data's ``map_batches`` runs: a batch of image
rows (``image_id``, ``class_name``, ``image`` bytes or ``path``) in, one mask row per (image,
concept) out (:data:`MASK_COLUMNS`, the masks contract of ARCHITECTURE.md). A bad image never
stops a batch: it becomes rows with ``status`` ``error`` and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from unspur.actors.segmenter_api import (
    ClipSegConfig,
    ConceptMask,
    GroundedSamConfig,
    GroundTruthConfig,
    Segmenter,
)
from unspur.config.masks import SEGMENTERS, SegmenterConfig
from unspur.data.images import ImageError, decode_rgb
from unspur.masks import bbox, encode

__all__ = [
    "ClipSegConfig",
    "GroundTruthConfig",
    "GroundedSamConfig",
    "MASK_COLUMNS",
    "SEGMENTERS",
    "SegmenterActor",
    "build_segmenter",
    "resolve_device",
]

#: columns of a mask row (ARCHITECTURE.md masks contract, plus the image's class)
MASK_COLUMNS = ("image_id", "concept", "class_name", "rle", "bbox", "score", "segmenter", "status", "error")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------- registry
# Each backend registers its settings class and a factory in the core registry
# ``unspur.config.masks.SEGMENTERS`` (the vocabulary of ``segmenter.name``); the factories import
# their backend lazily (ground truth needs no torch). To add a segmenter: implement it in
# actors/<name>.py (``set_image`` / ``predict``), then add its config class and one
# ``SEGMENTERS.add`` call here.


def _grounded_sam(cfg: SegmenterConfig) -> Segmenter:
    from unspur.actors.grounded_sam import GroundedSam

    return GroundedSam.from_config(cfg.grounded_sam, resolve_device(cfg.device))


def _check_grounded_sam(cfg: SegmenterConfig) -> None:
    gs = cfg.grounded_sam
    if gs.sam_model != "tiny" and not gs.sam_checkpoint:
        raise ValueError(
            f"segmenter.grounded_sam.sam_model={gs.sam_model} needs segmenter.grounded_sam.sam_checkpoint "
            "(a segment-anything .pth file); use sam_model=tiny only for a random test model"
        )


def _clipseg(cfg: SegmenterConfig) -> Segmenter:
    from unspur.actors.clipseg import ClipSeg

    return ClipSeg.from_config(cfg.clipseg, resolve_device(cfg.device))


def _ground_truth(cfg: SegmenterConfig) -> Segmenter:
    from unspur.actors.ground_truth import GroundTruth

    return GroundTruth.from_config(cfg.ground_truth)


def _check_ground_truth(cfg: SegmenterConfig) -> None:
    if cfg.ground_truth.parts and cfg.ground_truth.mask_dir:
        raise ValueError("segmenter.ground_truth: set parts or mask_dir, not both")


SEGMENTERS.add("grounded_sam", _grounded_sam, GroundedSamConfig, check=_check_grounded_sam)
SEGMENTERS.add("clipseg", _clipseg, ClipSegConfig)
SEGMENTERS.add("ground_truth", _ground_truth, GroundTruthConfig, check=_check_ground_truth)


def build_segmenter(cfg: SegmenterConfig | Mapping[str, Any]) -> Segmenter:
    """Build the segmenter ``cfg.name`` from its config section (a model or its dict dump)."""
    if not isinstance(cfg, SegmenterConfig):
        cfg = SegmenterConfig.model_validate(dict(cfg))
    return SEGMENTERS[cfg.name](cfg)


# ----------------------------------------------------------------------------- actor


def _clean_concepts(concepts: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Strip, drop empty strings and case-insensitive repeats, keep order."""
    out: dict[str, list[str]] = {}
    for cls, items in concepts.items():
        seen: set[str] = set()
        kept = []
        for item in items:
            text = " ".join(str(item).split())
            if text and text.lower() not in seen:
                seen.add(text.lower())
                kept.append(text)
        out[str(cls)] = kept
    return out


class SegmenterActor:
    """Ray Data callable: image rows -> one mask row per (image, concept of its class).

    ``segmenter``: a :class:`~unspur.config.SegmenterConfig` dump; ``concepts``: class name ->
    concept strings to segment. Input batch columns: ``image_id``, ``class_name``, and ``image``
    (bytes) or ``path``. Output: :data:`MASK_COLUMNS` as numpy object arrays; ``rle`` is a COCO
    RLE dict for ``ok`` rows and None otherwise.
    """

    def __init__(self, segmenter: Mapping[str, Any], concepts: Mapping[str, Sequence[str]]) -> None:
        self.cfg = SegmenterConfig.model_validate(dict(segmenter))
        self.segmenter = build_segmenter(self.cfg)
        self.concepts = _clean_concepts(concepts)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
        ids = list(batch["image_id"])
        n = len(ids)
        images = batch["image"] if "image" in batch else [None] * n
        paths = batch["path"] if "path" in batch else [None] * n
        rows: list[dict[str, Any]] = []
        for image_id, cls, data, path in zip(ids, batch["class_name"], images, paths, strict=True):
            rows.extend(self.segment_row(str(image_id), str(cls), data, path))
        return {col: _object_array([r[col] for r in rows]) for col in MASK_COLUMNS}

    def segment_row(
        self, image_id: str, class_name: str, data: Any, path: Any = None
    ) -> list[dict[str, Any]]:
        """All mask rows of one image (error rows if it cannot be read or segmented)."""
        concepts = self.concepts.get(class_name)
        if not concepts:
            known = sorted(c for c, v in self.concepts.items() if v)
            return [
                self._row(
                    image_id,
                    "",
                    class_name,
                    ConceptMask(
                        "",
                        None,
                        None,
                        "error",
                        f"class {class_name!r} has no concepts to segment (classes with "
                        f"concepts: {known[:10]}{' ...' if len(known) > 10 else ''})",
                    ),
                )
            ]
        try:
            image = decode_rgb(data, None if path is None else str(path))
            self.segmenter.set_image(image, image_id)
            results = self.segmenter.predict(concepts)
        except ImageError as err:
            return [
                self._row(image_id, c, class_name, ConceptMask(c, None, None, "error", str(err)))
                for c in concepts
            ]
        except Exception as err:  # one bad row never stops the batch; the reason is kept
            reason = f"{self.cfg.name} failed: {type(err).__name__}: {err}"
            return [
                self._row(image_id, c, class_name, ConceptMask(c, None, None, "error", reason))
                for c in concepts
            ]
        return [self._row(image_id, c, class_name, r) for c, r in zip(concepts, results, strict=True)]

    def _row(self, image_id: str, concept: str, class_name: str, res: ConceptMask) -> dict[str, Any]:
        ok = res.status == "ok" and res.mask is not None
        return {
            "image_id": image_id,
            "concept": concept,
            "class_name": class_name,
            "rle": encode(res.mask) if ok else None,
            "bbox": bbox(res.mask) if ok else None,
            "score": None if res.score is None else float(res.score),
            "segmenter": self.cfg.name,
            "status": res.status,
            "error": res.note,
        }


def _object_array(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out
