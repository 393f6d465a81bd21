"""Configs of ``unspur masks``: segmenter, actor pool, concept validation.

Each segmenter's settings class lives with its implementation in ``actors`` and is registered in
:data:`SEGMENTERS`; ``segmenter.name`` is looked up there when a config is validated.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from unspur.config.base import ActorPoolConfig, StrictModel
from unspur.config.registered import SectionedModel
from unspur.data.spuriousworld import SpuriousWorldConfig
from unspur.registry import Registry

__all__ = [
    "SEGMENTERS",
    "ConceptValidationConfig",
    "MaskComputeConfig",
    "MasksConfig",
    "SegmenterConfig",
]


#: segmenter name -> factory ``(SegmenterConfig) -> Segmenter``; config: its settings section.
#: The built-in segmenters (and their configs) are registered by ``unspur.actors.segmenters``.
SEGMENTERS: Registry = Registry(
    "segmenter", hint="the built-in segmenters are registered by importing unspur.actors.segmenters"
)


class SegmenterConfig(SectionedModel):
    """Which segmenter (:data:`SEGMENTERS`) and its settings, under a key of its name
    (``{name: clipseg, clipseg: {threshold: 0.5}}``); only the chosen section is used.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:1`` ...
    """

    registry: ClassVar[Registry] = SEGMENTERS

    name: str = "grounded_sam"
    device: str = "auto"


class MaskComputeConfig(ActorPoolConfig):
    """Ray Data actor pool of the mask stage: ``min_actors``..``max_actors`` segmenter actors, each
    holding ``num_gpus`` / ``num_cpus`` (fractional allowed: keep num_cpus <= 0.5 on small CPU
    machines so reads are not starved) and taking ``batch_size`` images per call (one shard each)."""


class ConceptValidationConfig(StrictModel):
    """CFT concept validation (METHODS.md 1.2): on ``images_per_class`` images per class keep a
    concept when its occurrence rate >= ``min_occurrence`` and its mean coverage (IoU with the
    object mask, or with the union of the class's concepts where the table has no object mask)
    >= ``min_coverage``. The main pass then segments only the kept concepts."""

    enabled: bool = True
    images_per_class: int = Field(30, ge=1)
    min_occurrence: float = Field(0.15, ge=0.0, le=1.0)
    min_coverage: float = Field(0.20, ge=0.0, le=1.0)


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
    overlays: int = Field(16, ge=0)
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
        gt = self.segmenter.section
        if self.segmenter.name == "ground_truth" and self.synth is None and not (gt.parts or gt.mask_dir):
            raise ValueError("segmenter.name=ground_truth needs segmenter.ground_truth.parts or .mask_dir")
        return self
