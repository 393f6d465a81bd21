"""Attention-probability capture for timm vision transformers.

Relevance methods need the attention probabilities ``A_l`` of every block, kept in the
autograd graph. timm computes them only on the unfused path, so models are built with fused
attention off (:func:`disable_fused_attn`) and the probabilities are taken from a forward hook
on ``blocks[i].attn.attn_drop`` (its output is the tensor multiplied with the values).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = [
    "attention_modules",
    "capture_attention",
    "disable_fused_attn",
    "num_prefix_tokens",
    "patch_grid",
    "unwrap",
]


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def disable_fused_attn(model: nn.Module) -> int:
    """Switch every timm attention module of ``model`` to the unfused path; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
            count += 1
    return count


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The ``attn_drop`` module of each transformer block, in depth order.

    Raises ValueError naming the model's class if it has no ``blocks[i].attn.attn_drop``
    (e.g. a CNN): attention relevance needs a ViT-style model.
    """
    bare = unwrap(model)
    blocks = getattr(bare, "blocks", None)
    found = []
    if blocks is not None:
        for block in blocks:
            drop = getattr(getattr(block, "attn", None), "attn_drop", None)
            if isinstance(drop, nn.Module):
                found.append(drop)
    if not found:
        raise ValueError(
            f"model {type(bare).__name__} has no blocks[i].attn.attn_drop modules; attention "
            "relevance needs a timm vision transformer (e.g. vit_tiny_synth, vit_base_patch16_224)"
        )
    return found


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the attention probabilities of every block while the context is open.

    Yields a list to which each forward pass appends one tensor per block, in depth order,
    shape (B, heads, N, N) with N = prefix tokens + patches; the tensors stay in the autograd
    graph. Run one forward per context, or clear the list between forwards. Raises
    RuntimeError if the model still uses fused attention (nothing could be captured).
    """
    modules = attention_modules(model)
    for m in unwrap(model).modules():
        if getattr(m, "fused_attn", False):
            raise RuntimeError(
                "fused attention is on, so no attention probabilities can be captured; build "
                "the model with unspur.models.build_model or call disable_fused_attn(model)"
            )
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured.append(output)

    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()


def num_prefix_tokens(model: nn.Module) -> int:
    """Tokens before the patch tokens (class + register tokens)."""
    return int(getattr(unwrap(model), "num_prefix_tokens", 0))


def patch_grid(model: nn.Module) -> tuple[int, int]:
    """(rows, cols) of the patch-token grid of a timm ViT."""
    grid = getattr(getattr(unwrap(model), "patch_embed", None), "grid_size", None)
    if grid is None:
        raise ValueError(f"model {type(unwrap(model)).__name__} has no patch_embed.grid_size")
    return int(grid[0]), int(grid[1])
