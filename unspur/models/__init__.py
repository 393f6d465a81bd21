"""Classifiers for unspur: a name-keyed registry over timm, attention capture, checkpoints."""

from unspur.models.attention import (
    attention_modules,
    capture_attention,
    disable_fused_attn,
    num_prefix_tokens,
    patch_grid,
    unwrap,
)
from unspur.models.checkpoint import (
    CheckpointError,
    checkpoint_model_config,
    load_weights,
    read_extra,
    save_checkpoint,
)
from unspur.models.families import load_checkpoint
from unspur.models.registry import MODELS, build_model, register_model

__all__ = [
    "MODELS",
    "CheckpointError",
    "attention_modules",
    "build_model",
    "capture_attention",
    "checkpoint_model_config",
    "disable_fused_attn",
    "load_checkpoint",
    "load_weights",
    "num_prefix_tokens",
    "patch_grid",
    "read_extra",
    "register_model",
    "save_checkpoint",
    "unwrap",
]
