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

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import Field

from unspur.config.base import StrictModel
from unspur.config.masks import SEGMENTERS, SegmenterConfig
from unspur.masks import bbox, encode

__all__ = [
    "ClipSegConfig",
    "GroundTruthConfig",
    "GroundedSamConfig",
    "MASK_COLUMNS",
    "SEGMENTERS",
    "ConceptMask",
    "ImageError",
    "Segmenter",
    "SegmenterActor",
    "build_segmenter",
    "decode_rgb",
    "resolve_device",
]

#: columns of a mask row (ARCHITECTURE.md masks contract, plus the image's class)
MASK_COLUMNS = ("image_id", "concept", "class_name", "rle", "bbox", "score", "segmenter", "status", "error")


class ImageError(ValueError):
    """An image row cannot be turned into an RGB array (the message says why)."""


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


def _grounded_sam(cfg: SegmenterConfig) -> Segmenter:
    from actors.grounded_sam import GroundedSam

    return GroundedSam.from_config(cfg.grounded_sam, resolve_device(cfg.device))


def _check_grounded_sam(cfg: SegmenterConfig) -> None:
    gs = cfg.grounded_sam
    if gs.sam_model != "tiny" and not gs.sam_checkpoint:
        raise ValueError(
            f"segmenter.grounded_sam.sam_model={gs.sam_model} needs segmenter.grounded_sam.sam_checkpoint "
            "(a segment-anything .pth file); use sam_model=tiny only for a random test model"
        )


def _clipseg(cfg: SegmenterConfig) -> Segmenter:
    from actors.clipseg import ClipSeg

    return ClipSeg.from_config(cfg.clipseg, resolve_device(cfg.device))


def _ground_truth(cfg: SegmenterConfig) -> Segmenter:
    from actors.ground_truth import GroundTruth

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


# ----------------------------------------------------------------------------- images


def _to_rgb8(img: Any) -> np.ndarray:
    """A loaded PIL image of any mode -> (H, W, 3) uint8 RGB; 16/32-bit grey is rescaled, not clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)


def decode_rgb(data: bytes | None, path: str | None = None) -> np.ndarray:
    """Image bytes (or a file at ``path``) -> (H, W, 3) uint8 RGB.

    Any mode PIL opens is accepted (CMYK, RGBA, P, L, 16-bit ...). PIL's decompression-bomb
    limit stays on. Raises :class:`ImageError` naming the problem (0 bytes, truncated, unknown
    format, too many pixels, missing file).
    """
    from PIL import Image, UnidentifiedImageError

    if data is None or (isinstance(data, float) and np.isnan(data)):
        if not path:
            raise ImageError("row has neither image bytes nor a path")
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ImageError(f"cannot read image file {path}: {err}") from None
    if len(data) == 0:
        raise ImageError("image has 0 bytes")
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            img.load()
            return _to_rgb8(img)
    except Image.DecompressionBombError as err:
        raise ImageError(f"decompression bomb refused ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"cannot decode image ({type(err).__name__}: {err})") from None


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
