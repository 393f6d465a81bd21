"""Model families in a name-keyed registry: how a model is built, run on a batch and evaluated.

``FAMILIES[name]`` meets :class:`ModelFamily`; its entry's config class is the family's model
config (``unspur.config.model.MODEL_FAMILIES``). ``timm`` (:class:`TimmClassifier`): an image
classifier from ``unspur.models.MODELS`` or timm, with relevance maps from its attention.
``clip`` (:class:`ClipFamily`): open_clip models (``forward`` gives image/text features, the
logit scale and zero-shot logits; ``predict`` and ``evaluate`` are zero-shot); the training
loop does not change. The config picks a family by name (``model.family``, ``timm`` when absent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from unspur.config.model import MODEL_FAMILIES
from unspur.models.attention import unwrap
from unspur.models.checkpoint import checkpoint_model_config, load_weights, read_config
from unspur.models.families.classifier import TimmClassifier
from unspur.models.families.clip import ClipFamily, zero_shot_head
from unspur.models.families.protocol import Batch, ModelFamily, Outputs, RelevanceFn
from unspur.registry import Registry

__all__ = [
    "FAMILIES",
    "Batch",
    "ClipFamily",
    "ModelFamily",
    "Outputs",
    "RelevanceFn",
    "TimmClassifier",
    "family_of",
    "get_family",
    "input_norm",
    "load_checkpoint",
    "register_family",
    "zero_shot_head",
]

#: family name -> :class:`ModelFamily`
FAMILIES: Registry[ModelFamily] = Registry("model family")


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to :data:`FAMILIES` under ``family.name`` with the config class registered
    for that name in ``MODEL_FAMILIES`` (a second one of a name is an error)."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"{type(family).__name__} does not meet the ModelFamily protocol")
    config = MODEL_FAMILIES.entry(family.name).config if family.name in MODEL_FAMILIES else None
    FAMILIES.add(family.name, family, config)
    return family


def get_family(name: str) -> ModelFamily:
    """The registered family called ``name`` (an error listing the registered ones otherwise)."""
    return FAMILIES[name]


register_family(TimmClassifier())
register_family(ClipFamily())


def family_of(model_cfg: Any) -> ModelFamily:
    """The family a model config names (``model.family``; ``timm`` for configs without one)."""
    return get_family(getattr(model_cfg, "family", "timm"))


def load_checkpoint(directory: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the checkpoint's model through its model family and load its weights -> (model in
    eval mode, config dict)."""
    directory = Path(directory)
    config = read_config(directory)
    cfg = checkpoint_model_config(directory)
    model = family_of(cfg).build(cfg)
    load_weights(model, directory, cfg)
    return model.eval(), config


def input_norm(model: nn.Module) -> dict[str, tuple[float, ...]]:
    """``{"mean", "std"}`` of a model's inputs from its ``pretrained_cfg`` (timm models; the clip
    family sets it), as ``ImageMaskDataset`` keyword arguments; {} = the dataset's ImageNet default."""
    pretrained = getattr(unwrap(model), "pretrained_cfg", None) or {}
    if "mean" in pretrained and "std" in pretrained:
        return {"mean": tuple(pretrained["mean"]), "std": tuple(pretrained["std"])}
    return {}
