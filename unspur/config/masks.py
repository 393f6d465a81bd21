"""Configs of ``unspur masks``: segmenter, actor pool, concept validation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unspur.config.base import StrictModel
from unspur.data.spuriousworld import SpuriousWorldConfig

__all__ = [
    "ClipSegConfig",
    "ConceptValidationConfig",
    "GroundTruthConfig",
    "GroundedSamConfig",
    "MaskComputeConfig",
    "MasksConfig",
    "SegmenterConfig",
]


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
    box_threshold: float = 0.35
    text_threshold: float = 0.25
    prompt_mode: Literal["merged", "per_concept"] = "merged"
    nms_iou: float = 0.8
    max_boxes_per_concept: int = 4
    sam_batch_size: int = 64
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> GroundedSamConfig:
        for name in ("box_threshold", "text_threshold", "nms_iou"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"grounded_sam.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.max_boxes_per_concept < 1 or self.sam_batch_size < 1:
            raise ValueError(
                "grounded_sam.max_boxes_per_concept and grounded_sam.sam_batch_size must be >= 1"
            )
        return self


class ClipSegConfig(StrictModel):
    """``segmenter.name: clipseg``: text-prompted CLIPSeg; a pixel is in the mask when its
    probability exceeds ``threshold``. ``model``: a Hugging Face id / local folder, or ``tiny``."""

    model: str = "CIDAS/clipseg-rd64-refined"
    threshold: float = 0.4
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ClipSegConfig:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"clipseg.threshold must lie in [0, 1], got {self.threshold}")
        return self


class GroundTruthConfig(StrictModel):
    """``segmenter.name: ground_truth``: masks a dataset already has, matched to concept strings
    (exact name, then head noun: "long beak" -> beak). ``parts``: a Parquet parts table
    (``image_id``, ``part``, ``rle``); ``mask_dir``: a folder of ``<image_id>/<part>.png`` (non-zero =
    inside). Exactly one of the two (with ``synth``, ``parts`` defaults to the generated table)."""

    parts: str | None = None
    mask_dir: str | None = None


class SegmenterConfig(StrictModel):
    """Which segmenter (``actors.segmenters.SEGMENTERS``) and its settings; only its section is used.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1`` ...
    """

    name: Literal["grounded_sam", "clipseg", "ground_truth"] = "grounded_sam"
    device: str = "auto"
    grounded_sam: GroundedSamConfig = Field(default_factory=GroundedSamConfig)
    clipseg: ClipSegConfig = Field(default_factory=ClipSegConfig)
    ground_truth: GroundTruthConfig = Field(default_factory=GroundTruthConfig)

    @model_validator(mode="after")
    def _check(self) -> SegmenterConfig:
        gs = self.grounded_sam
        if self.name == "grounded_sam" and gs.sam_model != "tiny" and not gs.sam_checkpoint:
            raise ValueError(
                f"segmenter.grounded_sam.sam_model={gs.sam_model} needs segmenter.grounded_sam.sam_checkpoint "
                "(a segment-anything .pth file); use sam_model=tiny only for a random test model"
            )
        gt = self.ground_truth
        if self.name == "ground_truth" and gt.parts and gt.mask_dir:
            raise ValueError("segmenter.ground_truth: set parts or mask_dir, not both")
        return self


class MaskComputeConfig(StrictModel):
    """Ray Data actor pool of the mask stage: ``min_actors``..``max_actors`` segmenter actors, each
    holding ``num_gpus`` / ``num_cpus`` (fractional allowed: keep num_cpus <= 0.5 on small CPU
    machines so reads are not starved) and taking ``batch_size`` images per call (one shard each)."""

    min_actors: int = 1
    max_actors: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 0.5
    batch_size: int = 8

    @model_validator(mode="after")
    def _check(self) -> MaskComputeConfig:
        if self.min_actors < 1 or self.max_actors < self.min_actors:
            raise ValueError(f"need 1 <= min_actors <= max_actors, got {self.min_actors}, {self.max_actors}")
        if self.num_cpus < 0 or self.num_gpus < 0 or self.num_cpus + self.num_gpus == 0:
            raise ValueError(f"an actor needs num_cpus or num_gpus > 0, got {self.num_cpus}, {self.num_gpus}")
        if self.batch_size < 1:
            raise ValueError(f"compute.batch_size must be >= 1, got {self.batch_size}")
        return self


class ConceptValidationConfig(StrictModel):
    """CFT concept validation (METHODS.md 1.2): on ``images_per_class`` images per class keep a
    concept when its occurrence rate >= ``min_occurrence`` and its mean coverage (IoU with the
    object mask, or with the union of the class's concepts where the table has no object mask)
    >= ``min_coverage``. The main pass then segments only the kept concepts."""

    enabled: bool = True
    images_per_class: int = 30
    min_occurrence: float = 0.15
    min_coverage: float = 0.20

    @model_validator(mode="after")
    def _check(self) -> ConceptValidationConfig:
        if self.images_per_class < 1:
            raise ValueError(f"validation.images_per_class must be >= 1, got {self.images_per_class}")
        for name in ("min_occurrence", "min_coverage"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"validation.{name} must lie in [0, 1], got {getattr(self, name)}")
        return self


class MasksConfig(StrictModel):
    """``unspur masks``: image table + concept bank -> concept masks (Parquet shards of COCO RLE).

    Images: ``images`` (a Parquet image table, file or folder) or ``synth`` (a SpuriousWorld set of
    ``synth_splits`` generated into ``<out>/data``); ``splits`` keeps only rows of those splits
    (None = all). Concepts: ``bank`` (a concept bank JSON from ``unspur concepts``) or ``concepts``
    (inline ``{class: [concept, ...]}``, kind important); only ``kinds`` are segmented. Output:
    ``<out>/masks/*.parquet`` (the training input), ``<out>/concepts_validated.json``,
    ``<out>/summary.json``; a rerun skips image ids already written.
    """

    out: str = "runs/masks"
    images: str | None = None
    synth: SpuriousWorldConfig | None = None
    synth_splits: list[Literal["train", "val", "test"]] = ["train"]
    splits: list[str] | None = None
    bank: str | None = None
    concepts: dict[str, list[str]] | None = None
    kinds: list[Literal["important", "superclass", "around"]] = ["important"]
    segmenter: SegmenterConfig = Field(default_factory=SegmenterConfig)
    compute: MaskComputeConfig = Field(default_factory=MaskComputeConfig)
    validation: ConceptValidationConfig = Field(default_factory=ConceptValidationConfig)
    overlays: int = 16
    experiment: str = "masks"
    track: bool = True

    @model_validator(mode="after")
    def _check(self) -> MasksConfig:
        if (self.images is None) == (self.synth is None):
            raise ValueError(
                "set exactly one of images (a Parquet image table) or synth (generate SpuriousWorld)"
            )
        if (self.bank is None) == (self.concepts is None):
            raise ValueError(
                "set exactly one of bank (a concept bank JSON) or concepts (inline {class: [...]})"
            )
        if not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"kinds must be a non-empty list without repeats, got {self.kinds}")
        gt = self.segmenter.ground_truth
        if self.segmenter.name == "ground_truth" and self.synth is None and not (gt.parts or gt.mask_dir):
            raise ValueError("segmenter.name=ground_truth needs segmenter.ground_truth.parts or .mask_dir")
        if self.overlays < 0:
            raise ValueError(f"overlays must be >= 0, got {self.overlays}")
        return self
