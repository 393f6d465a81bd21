"""Config of ``unspur run`` / ``unspur demo``."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from unspur.config.base import StrictModel
from unspur.data.spuriousworld import SpuriousWorldConfig

__all__ = ["PipelineConfig", "PipelineDataConfig", "PipelineEvaluateConfig"]


class PipelineDataConfig(StrictModel):
    """Data of ``unspur run``: render SpuriousWorld (default), or use an existing image table.

    ``images``: a Parquet image table (file or folder of shards) with a ``split`` column;
    ``parts``: a ground-truth parts / masks table for the ``ground_truth`` segmenter and for
    relevance alignment at evaluation (optional). Give exactly one of ``spuriousworld`` and
    ``images``.
    """

    spuriousworld: SpuriousWorldConfig | None = Field(default_factory=SpuriousWorldConfig)
    images: str | None = None
    parts: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PipelineDataConfig:
        if (self.images is None) == (self.spuriousworld is None):
            raise ValueError(
                "give exactly one of data.spuriousworld (render it) and data.images (an existing "
                "image table); set the other to null"
            )
        return self


class PipelineEvaluateConfig(StrictModel):
    """Final evaluation of every trained model on ``split`` (never the split used for choices)."""

    split: str = "test"
    batch_size: int = 64
    relevance: str | None = "rollout"
    num_actors: int = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0


class PipelineConfig(StrictModel):
    """``unspur run`` / ``unspur demo``: concepts -> masks (+ validation) -> base -> CFT (+ control)
    -> evaluate, each stage in ``<out>/<stage>`` and reused when its output exists with the same
    config.

    The stage sections hold keys of the stage jobs' own configs (``ConceptsConfig``,
    ``MasksConfig``, ``FinetuneConfig``) on top of what the pipeline wires itself: each stage's
    ``out``, the image table, the concept bank, the masks and the base checkpoint. They are
    validated against those models before anything runs. ``control`` (ERM on the very same few
    images and epochs as ``cft``) runs unless ``run_control`` is false. ``sweep`` (optional, keys of
    ``SweepConfig``: ``space``, ``num_samples``, ...): a Ray Tune sweep over the ``cft`` stage's
    config, ranked on the validation split; its best model is evaluated beside the others.
    """

    out: str = "runs/pipeline"
    data: PipelineDataConfig = Field(default_factory=PipelineDataConfig)
    concepts: dict[str, Any] = {}
    masks: dict[str, Any] = {}
    base: dict[str, Any] = {}
    cft: dict[str, Any] = {}
    run_control: bool = True
    sweep: dict[str, Any] | None = None
    evaluate: PipelineEvaluateConfig = Field(default_factory=PipelineEvaluateConfig)
    experiment: str = "pipeline"
    reuse: bool = True
