"""The predictor API every segmenter backend implements, the answer it gives per concept, and
each backend's settings (``segmenter.<name>`` in a masks config; torch-free, so registering them
in ``actors/segmenters.py`` loads no model code).

Backends (``actors/grounded_sam.py``, ``actors/clipseg.py``, ``actors/ground_truth.py``) import
this module; ``actors/segmenters.py`` registers them by name and runs them in Ray Data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from pydantic import Field

from unspur.config.base import StrictModel

__all__ = ["ClipSegConfig", "ConceptMask", "GroundTruthConfig", "GroundedSamConfig", "Segmenter"]


@dataclass
class ConceptMask:
    """The answer for one concept: ``mask`` (H, W) bool at the image's size, or None.

    ``status``: ``ok`` (non-empty mask), ``empty`` (nothing found), ``error``; ``note`` says why a
    mask is empty or failed; ``score`` is the backend's confidence in [0, 1] (None if none).
    """

    concept: str
    mask: np.ndarray | None
    score: float | None = None
    status: str = "ok"
    note: str | None = None

    @classmethod
    def found(cls, concept: str, mask: np.ndarray, score: float | None, empty_note: str) -> ConceptMask:
        """``ok`` when ``mask`` has a pixel set, else ``empty`` with ``empty_note``."""
        if mask.any():
            return cls(concept, mask, score, "ok")
        return cls(concept, None, score, "empty", empty_note)


class Segmenter(Protocol):
    """Predictor API of every backend: encode an image once, answer many concept prompts."""

    name: str

    def set_image(self, image: np.ndarray, image_id: str = "") -> None:
        """Encode ``image`` ((H, W, 3) uint8 RGB) once; ``image_id`` names it (ground truth lookup)."""

    def predict(self, concepts: Sequence[str]) -> list[ConceptMask]:
        """One :class:`ConceptMask` per concept (same order), masks (H, W) at the set image's size."""


class GroundedSamConfig(StrictModel):
    """``segmenter.name: grounded_sam``: GroundingDINO boxes (transformers) -> SAM box-prompted masks.

    ``detector``: a Hugging Face id or local folder of a zero-shot object detector (GroundingDINO),
    or ``tiny`` (random init, for tests). ``sam_model``: a segment-anything registry size (``vit_h``,
    ``vit_l``, ``vit_b``) loaded from ``sam_checkpoint`` (a .pth file), or ``tiny`` (random init,
    img_size 256). A query box is a detection when its best token probability over the prompt's
    concepts exceeds ``box_threshold``; it belongs to every concept with a token above
    ``text_threshold``. ``prompt_mode``: ``merged`` = one detector pass per image over "c1. c2. ...",
    ``per_concept`` = one prompt "<concept>." per concept (one batched pass). Per concept, boxes
    go through NMS at ``nms_iou``, the best ``max_boxes_per_concept`` are kept, and SAM decodes
    at most ``sam_batch_size`` boxes per call from the image's one cached embedding.
    """

    detector: str = "IDEA-Research/grounding-dino-tiny"
    sam_model: str = "vit_h"
    sam_checkpoint: str | None = None
    box_threshold: float = Field(0.35, ge=0.0, le=1.0)
    text_threshold: float = Field(0.25, ge=0.0, le=1.0)
    prompt_mode: Literal["merged", "per_concept"] = "merged"
    nms_iou: float = Field(0.8, ge=0.0, le=1.0)
    max_boxes_per_concept: int = Field(4, ge=1)
    sam_batch_size: int = Field(64, ge=1)
    seed: int = 0


class ClipSegConfig(StrictModel):
    """``segmenter.name: clipseg``: text-prompted CLIPSeg; a pixel is in the mask when its
    probability exceeds ``threshold``. ``model``: a Hugging Face id / local folder, or ``tiny``."""

    model: str = "CIDAS/clipseg-rd64-refined"
    threshold: float = Field(0.4, ge=0.0, le=1.0)
    seed: int = 0


class GroundTruthConfig(StrictModel):
    """``segmenter.name: ground_truth``: masks a dataset already has, matched to concept strings
    (exact name, then head noun: "long beak" -> beak). ``parts``: a Parquet parts table
    (``image_id``, ``part``, ``rle``); ``mask_dir``: a folder of ``<image_id>/<part>.png`` (non-zero =
    inside). Exactly one of the two (with ``synth``, ``parts`` defaults to the generated table)."""

    parts: str | None = None
    mask_dir: str | None = None
