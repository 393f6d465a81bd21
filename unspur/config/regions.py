"""Configs of RaVL's two jobs (METHODS.md 2): ``unspur regions`` (region embedding on Ray Data)
and ``unspur discover`` (clustering and scoring of the region table)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from unspur.config.base import ActorPoolConfig, StrictModel

__all__ = ["DiscoverConfig", "RegionComputeConfig", "RegionSourceConfig", "RegionsConfig"]


class RegionSourceConfig(StrictModel):
    """Where an image's candidate regions come from (:mod:`unspur.regions`).

    ``source``: ``grid`` (the ``grid`` x ``grid`` cells; RaVL's synthetic setting: 2, the
    quadrants) or ``masks`` (one region per ok mask of the image in the ``masks`` table of
    ``unspur masks``: the box around the mask, outside it zeroed; masks under ``min_pixels``
    pixels are skipped, at most ``max_regions`` per image, largest first; with ``background``
    one more region, named ``background``: what none of the image's masks covers, i.e. the
    background when the masks are the object's parts). ``truth_column``: an
    image-table column holding a COCO RLE of the spurious feature (digits-grid: ``marker_rle``);
    a region's ``truth`` flag is ``|region & truth| / min(|region|, |truth|) >= min_overlap``
    (null where the table has no such column). ``blank_std``: regions whose pixel standard
    deviation (0-255) is at most this are blank background and are not regions (None keeps all).
    """

    source: Literal["grid", "masks"] = "grid"
    grid: int = Field(2, ge=1, le=16)
    masks: str | None = None
    min_pixels: int = Field(16, ge=1)
    max_regions: int = Field(16, ge=1)
    background: bool = Field(False, description="masks: add the region no mask covers")
    truth_column: str | None = None
    truth_invert: bool = Field(False, description="the feature is everything OUTSIDE the truth mask")
    min_overlap: float = Field(0.5, gt=0, le=1)
    blank_std: float | None = Field(None, ge=0, description="drop regions this uniform (None: keep)")

    @model_validator(mode="after")
    def _check(self) -> RegionSourceConfig:
        if self.source == "masks" and not self.masks:
            raise ValueError(
                "regions.source is masks: set regions.masks to the masks table of `unspur masks`"
            )
        if self.background and self.source != "masks":
            raise ValueError("regions.background is the part no mask covers: it needs regions.source masks")
        return self


class RegionComputeConfig(ActorPoolConfig):
    """The region embedders' actor pool (``batch_size`` images per call, one atomic shard each);
    ``device`` ``auto`` / ``cpu`` / ``cuda``; ``threads`` torch threads per actor (0 = max(1, int(num_cpus)))."""

    batch_size: int = Field(32, ge=1)
    device: str = "auto"
    threads: int = Field(0, ge=0)


class RegionsConfig(StrictModel):
    """``unspur regions``: image table + CLIP checkpoint -> region table (Parquet).

    Per image of ``splits`` (None = all): one row for the whole image (``kind: image``,
    ``region_id`` -1) and one per region (``kind: region``), each with its box, L2-normalised CLIP
    embedding, zero-shot class probabilities ``softmax(emb @ head.T / temperature)``, ``pred`` and
    ground-truth flag. Writes ``<out>/regions/`` (shards: a rerun skips written images) and
    ``<out>/regions.parquet``; an image that cannot be read is one error row.
    """

    out: str = "runs/regions"
    checkpoint: str
    images: str
    splits: list[str] | None = None
    regions: RegionSourceConfig = Field(default_factory=RegionSourceConfig)
    temperature: float = Field(0.07, gt=0)
    compute: RegionComputeConfig = Field(default_factory=RegionComputeConfig)


class DiscoverConfig(StrictModel):
    """``unspur discover``: region table -> ranked spurious clusters (METHODS.md 2.2).

    Clusters the ``kind: region`` rows of ``split`` (``level: image`` clusters the whole-image
    rows instead: the image-level baseline, influence off) with K-medoids over
    K in [``k_min_factor`` C, ``k_max_factor`` C) (C classes; RaVL: 2, 5) by silhouette, on at
    most ``max_points`` regions (the others join their nearest medoid). Every other row of the
    table (other splits) is assigned to its nearest medoid too, and ``flags.parquet`` says for
    every region whether it lies in the top cluster (``spurious``) and which class it is tied to
    (the class of the cluster's largest positive gap): the mitigation loss reads it. ``top``
    clusters get a figure of their ``figure_regions`` regions most similar to the medoid.
    """

    out: str = "runs/discover"
    regions: str
    images: str | None = Field(None, description="image table, for the figures (None: no figures)")
    split: str | None = "val"
    level: Literal["region", "image"] = "region"
    k_min_factor: float = Field(2.0, gt=0)
    k_max_factor: float = Field(5.0, gt=0)
    max_points: int = Field(3000, ge=10)
    min_influence: float = Field(0.25, ge=0, le=1)
    top: int = Field(3, ge=1)
    figure_regions: int = Field(16, ge=0)
    precision_k: int = Field(10, ge=1)
    seed: int = 0
    experiment: str = "discover"
    track: bool = True

    @model_validator(mode="after")
    def _check(self) -> DiscoverConfig:
        if self.k_max_factor <= self.k_min_factor:
            raise ValueError(
                f"need k_min_factor < k_max_factor, got {self.k_min_factor}, {self.k_max_factor}"
            )
        return self
