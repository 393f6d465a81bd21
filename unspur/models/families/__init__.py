"""Model families in a name-keyed registry: how a model is built, run on a batch and evaluated.

``FAMILIES[name]`` meets :class:`ModelFamily`. ``timm`` (:class:`TimmClassifier`): an image
classifier from ``unspur.models.MODELS`` or timm, with relevance maps from its attention. A
CLIP family registers the same four members (``build``, ``forward`` producing image/text
features, ``predict`` and ``evaluate`` zero-shot); the training loop does not change. The
config picks a family by name (``model.family``, ``timm`` when absent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from unspur.models.checkpoint import checkpoint_model_config, load_weights, read_config
from unspur.models.families.classifier import TimmClassifier
from unspur.models.families.protocol import Batch, ModelFamily, Outputs, RelevanceFn
from unspur.registry import Registry

__all__ = [
    "FAMILIES",
    "Batch",
    "ModelFamily",
    "Outputs",
    "RelevanceFn",
    "TimmClassifier",
    "family_of",
    "get_family",
    "load_checkpoint",
    "register_family",
]

#: family name -> :class:`ModelFamily`
FAMILIES: Registry[ModelFamily] = Registry("model family")


def register_family(family: ModelFamily) -> ModelFamily:
    """Add ``family`` to :data:`FAMILIES` under ``family.name`` (a second one of a name is an error)."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"{type(family).__name__} does not meet the ModelFamily protocol")
    FAMILIES.add(family.name, family)
    return family


def get_family(name: str) -> ModelFamily:
    """The registered family called ``name`` (an error listing the registered ones otherwise)."""
    return FAMILIES[name]


register_family(TimmClassifier())


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
