"""Strict configuration models for every unspur workflow, one module per stage.

Each workflow has one pydantic model; unknown keys are rejected, defaults live in the models and
nowhere else. Configs load from YAML (``yaml.safe_load``) and take dotted overrides from the
command line (``train.lr=1e-4``). A bad config raises :class:`ConfigError` naming the file,
the key and what is allowed, before any compute starts.

``base`` (loading, overrides, errors), ``registered`` (fields naming registry entries), ``model``
(the model section, per family), ``data``,
``finetune``, ``concepts``, ``masks``, ``evaluate``, ``adapt``, ``regions``, ``sweep``, ``pipeline``. Names are imported
from their module on first use, so ``unspur.config.base`` can be imported by the modules that
define registered configs (``unspur.data``, ``unspur.losses``) without an import cycle.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from unspur.config.adapt import AdaptCheckConfig, AdaptComputeConfig, AdaptConfig, SEraserConfig
    from unspur.config.base import (
        ConfigError,
        StrictModel,
        apply_overrides,
        dump_config,
        flatten,
        load_config,
        parse_overrides,
        validate_config,
    )
    from unspur.config.concepts import (
        CONCEPT_BACKENDS,
        CONCEPT_KINDS,
        ConceptClassesConfig,
        ConceptFilterConfig,
        ConceptSamplingConfig,
        ConceptsConfig,
        ConceptSimilarityConfig,
    )
    from unspur.config.data import DigitsGridConfig, SpuriousWorldConfig, SynthConfig
    from unspur.config.evaluate import EvaluateConfig
    from unspur.config.finetune import (
        FewShotConfig,
        FinetuneConfig,
        FinetuneDataConfig,
        FinetuneRunConfig,
        LossConfig,
        TrainConfig,
    )
    from unspur.config.masks import (
        SEGMENTERS,
        ConceptValidationConfig,
        MaskComputeConfig,
        MasksConfig,
        SegmenterConfig,
    )
    from unspur.config.model import MODEL_FAMILIES, ClipModelConfig, ModelConfig
    from unspur.config.pipeline import PipelineConfig, PipelineEvaluateConfig, ReportConfig, StageSpec
    from unspur.config.regions import DiscoverConfig, RegionComputeConfig, RegionsConfig, RegionSourceConfig
    from unspur.config.sweep import SweepConfig

_MODULES = {
    "adapt": ["AdaptCheckConfig", "AdaptComputeConfig", "AdaptConfig", "SEraserConfig"],
    "base": [
        "ConfigError",
        "StrictModel",
        "apply_overrides",
        "dump_config",
        "flatten",
        "load_config",
        "parse_overrides",
        "validate_config",
    ],
    "data": ["DigitsGridConfig", "SpuriousWorldConfig", "SynthConfig"],
    "evaluate": ["EvaluateConfig"],
    "finetune": [
        "FewShotConfig",
        "FinetuneConfig",
        "FinetuneDataConfig",
        "FinetuneRunConfig",
        "LossConfig",
        "TrainConfig",
    ],
    "model": ["MODEL_FAMILIES", "ClipModelConfig", "ModelConfig"],
    "concepts": [
        "CONCEPT_BACKENDS",
        "CONCEPT_KINDS",
        "ConceptClassesConfig",
        "ConceptFilterConfig",
        "ConceptSamplingConfig",
        "ConceptSimilarityConfig",
        "ConceptsConfig",
    ],
    "masks": [
        "SEGMENTERS",
        "ConceptValidationConfig",
        "MaskComputeConfig",
        "MasksConfig",
        "ReportConfig",
        "SegmenterConfig",
    ],
    "pipeline": ["PipelineConfig", "PipelineEvaluateConfig", "ReportConfig", "StageSpec"],
    "regions": ["DiscoverConfig", "RegionComputeConfig", "RegionSourceConfig", "RegionsConfig"],
    "sweep": ["SweepConfig"],
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [
    "AdaptCheckConfig",
    "AdaptComputeConfig",
    "AdaptConfig",
    "CONCEPT_BACKENDS",
    "CONCEPT_KINDS",
    "MODEL_FAMILIES",
    "SEGMENTERS",
    "ClipModelConfig",
    "ConceptClassesConfig",
    "ConceptFilterConfig",
    "ConceptSamplingConfig",
    "ConceptSimilarityConfig",
    "ConceptValidationConfig",
    "ConceptsConfig",
    "ConfigError",
    "DigitsGridConfig",
    "DiscoverConfig",
    "EvaluateConfig",
    "FewShotConfig",
    "FinetuneConfig",
    "FinetuneDataConfig",
    "FinetuneRunConfig",
    "LossConfig",
    "MaskComputeConfig",
    "MasksConfig",
    "ModelConfig",
    "PipelineConfig",
    "PipelineEvaluateConfig",
    "RegionComputeConfig",
    "RegionSourceConfig",
    "RegionsConfig",
    "ReportConfig",
    "SEraserConfig",
    "SegmenterConfig",
    "SpuriousWorldConfig",
    "StageSpec",
    "StrictModel",
    "SweepConfig",
    "SynthConfig",
    "TrainConfig",
    "apply_overrides",
    "dump_config",
    "flatten",
    "load_config",
    "parse_overrides",
    "validate_config",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'unspur.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"unspur.config.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
