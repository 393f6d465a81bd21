"""Classifier registry: tiny synthetic configs by name, any other name through timm.

``MODELS`` maps a name to a factory ``(ModelConfig) -> nn.Module``; ``load_checkpoint`` rebuilds a
saved model from its checkpoint folder. Every model is built with
fused attention off so attention probabilities can be captured (see ``attention.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import timm
from timm.layers import HybridEmbed, set_fused_attn
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from unspur.config import ModelConfig
from unspur.models.attention import disable_fused_attn
from unspur.models.checkpoint import load_weights

__all__ = ["MODELS", "build_model", "register_model"]

Factory = Callable[[ModelConfig], nn.Module]
MODELS: dict[str, Factory] = {}


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator adding a factory to :data:`MODELS` under ``name``."""

    def wrap(fn: Factory) -> Factory:
        if name in MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        MODELS[name] = fn
        return fn

    return wrap


_TINY_VIT: dict[str, Any] = {
    "patch_size": 8,
    "embed_dim": 192,
    "depth": 4,
    "num_heads": 3,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
}


@register_model("vit_tiny_synth")
def vit_tiny_synth(cfg: ModelConfig) -> nn.Module:
    """ViT for 64 px synthetic images: patch 8 (8x8 grid), dim 192, depth 4, 3 heads, CLS token.

    ``cfg.kwargs`` override any VisionTransformer argument (e.g. ``class_token: false,
    global_pool: avg`` for a GAP model, ``reg_tokens: 2``, ``depth: 2``).
    """
    if cfg.pretrained:
        raise ValueError(
            f"model {cfg.name!r} is a from-scratch config with no pretrained weights; "
            "set model.pretrained=false or pick a timm model name"
        )
    args = {**_TINY_VIT, **cfg.kwargs}
    return VisionTransformer(img_size=cfg.img_size, num_classes=cfg.num_classes, **args)


def _conv_stem(channels: tuple[int, ...], in_chans: int = 3) -> nn.Sequential:
    """Stride-2 3x3 conv + BN + GELU per entry of ``channels`` (total stride 2**len)."""
    layers: list[nn.Module] = []
    prev = in_chans
    for ch in channels:
        layers += [nn.Conv2d(prev, ch, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(ch), nn.GELU()]
        prev = ch
    return nn.Sequential(*layers)


@register_model("hybrid_tiny_synth")
def hybrid_tiny_synth(cfg: ModelConfig) -> nn.Module:
    """Conv-stem hybrid ViT for 64 px images: three stride-2 convs (32, 64, 128 channels) give an
    8x8 feature grid, projected (1x1) to 192-d tokens, then 4 transformer blocks as vit_tiny_synth.

    Learns object shapes from a few thousand images far faster than a plain patch ViT. Extra
    kwarg ``stem_channels`` (list of ints) changes the stem; other kwargs go to VisionTransformer.
    """
    if cfg.pretrained:
        raise ValueError(
            f"model {cfg.name!r} is a from-scratch config with no pretrained weights; "
            "set model.pretrained=false or pick a timm model name"
        )
    kwargs = dict(cfg.kwargs)
    channels = tuple(int(c) for c in kwargs.pop("stem_channels", (32, 64, 128)))
    stem = _conv_stem(channels)
    args = {**_TINY_VIT, "patch_size": 1, **kwargs}
    embed = partial(HybridEmbed, backbone=stem)
    return VisionTransformer(img_size=cfg.img_size, num_classes=cfg.num_classes, embed_layer=embed, **args)


def _timm_model(cfg: ModelConfig) -> nn.Module:
    """Any timm model name (``pretrained`` downloads timm's weights on a cluster)."""
    if cfg.name not in timm.list_models() and cfg.name.split(".")[0] not in timm.list_models():
        raise ValueError(
            f"unknown model {cfg.name!r}: not registered in unspur ({sorted(MODELS)}) and not a timm "
            "model name (see timm.list_models())"
        )
    try:
        return timm.create_model(
            cfg.name,
            pretrained=cfg.pretrained,
            num_classes=cfg.num_classes,
            img_size=cfg.img_size,
            **cfg.kwargs,
        )
    except TypeError as err:  # models without an img_size argument (CNNs)
        if "img_size" not in str(err):
            raise
        return timm.create_model(
            cfg.name, pretrained=cfg.pretrained, num_classes=cfg.num_classes, **cfg.kwargs
        )


def build_model(cfg: ModelConfig) -> nn.Module:
    """Build the classifier ``cfg`` names, fused attention off; load ``cfg.checkpoint`` if set.

    Output: an ``nn.Module`` mapping images (B, 3, img_size, img_size) to logits (B, num_classes).
    """
    set_fused_attn(False)
    factory = MODELS.get(cfg.name, _timm_model)
    try:
        model = factory(cfg)
    except TypeError as err:
        raise ValueError(f"model {cfg.name!r} rejected model.kwargs {cfg.kwargs}: {err}") from err
    disable_fused_attn(model)
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint, cfg)
    return model
