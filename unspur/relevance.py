"""Differentiable relevance maps Phi for vision transformers (METHODS.md 1.3).

``RELEVANCE`` maps a method name to ``fn(model, images, target) -> (logits, phi)``;
:func:`relevance_map` is the entry point. ``rollout`` (default) is Chefer's gradient-weighted
attention rollout: A_l = attention probabilities (B, heads, N, N) kept in the graph,
G_l = d(sum_b logit[b, target_b]) / dA_l (``torch.autograd.grad`` w.r.t. the attention maps
only, no ``create_graph``: the gradients are constants), Abar_l = mean_heads(clamp(G_l * A_l,
min=0)), R = I and R = R + Abar_l @ R per layer. Phi is R's CLS row over the patch columns (or,
for models pooling tokens by their mean, the mean of R's patch rows), register tokens dropped,
reshaped to the patch grid, bilinearly upsampled to the image and min-max normalised per image
to [0, 1]. Phi stays differentiable w.r.t. the model parameters through A_l.

``attnlrp`` is AttnLRP (Achtibat et al. 2024), implemented in :mod:`unspur.attnlrp`: the model's own
forward with hooks, then the AttnLRP rules (LN rule, identity rule, softmax rule, uniform rule for
the attention matmuls, LRP-epsilon elsewhere) as an explicit backward from the target logit to the
tokens entering the first block; Phi is the patch tokens' signed relevance, reshaped, upsampled and
min-max normalised as above. It stays differentiable: a loss on Phi trains through the rule
backward (second order, as a double backward). Its sign matters to CFT: min-max of the *signed*
relevance puts the most negative evidence at Phi = 0, so CFT's background term is met by making the
background count strongly *against* the other classes - still a shortcut, and CFT on signed AttnLRP
makes it grow (benchmarks/README.md "AttnLRP against rollout"). ``attnlrp_abs`` maps the magnitude
|R| (Phi near 0: not used for or against the class), ``attnlrp_pos`` the positive part max(R, 0).
It is not taken from ``lxt``: lxt 2.1 does not import next to transformers 5.x (``lxt.efficient``
imports ``find_pruneable_heads_and_indices``, ``lxt.explicit.core`` imports
``transformers.utils.fx``; both are gone) and ships rule maps only for Hugging Face models and
torchvision's ViT (none for timm).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from unspur.attnlrp import token_relevance
from unspur.models.attention import capture_attention, num_prefix_tokens, patch_grid, unwrap

__all__ = [
    "RELEVANCE",
    "attnlrp",
    "attnlrp_abs",
    "attnlrp_pos",
    "minmax",
    "relevance_map",
    "rollout",
    "rollout_from_attention",
    "upsample",
]

RelevanceFn = Callable[[nn.Module, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
EPS = 1e-8


def minmax(phi: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``phi`` (B, H, W) to [0, 1] (a constant map becomes 0)."""
    flat = phi.flatten(1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(EPS)).view_as(phi)


def upsample(grid_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize (B, h, w) patch-grid maps to (B, H, W)."""
    return F.interpolate(grid_maps.unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)


def _uses_cls_row(model: nn.Module) -> bool:
    bare = unwrap(model)
    return getattr(bare, "cls_token", None) is not None and getattr(bare, "global_pool", "token") == "token"


def rollout_from_attention(
    attentions: list[torch.Tensor], grads: list[torch.Tensor], n_prefix: int, cls_row: bool
) -> torch.Tensor:
    """Gradient-weighted rollout -> per-patch relevance (B, P) with P = N - n_prefix.

    attentions, grads: per layer (B, heads, N, N), first layer first. Computes the needed row
    of R = prod_l (I + Abar_l) as a row vector (r <- r + r @ Abar_l, last layer first), which
    equals R's row from R = I; R = R + Abar_l @ R, in O(N^2) per layer instead of O(N^3).
    """
    first = attentions[0]
    batch, n_tokens = first.shape[0], first.shape[-1]
    r = torch.zeros(batch, 1, n_tokens, dtype=first.dtype, device=first.device)
    if cls_row:
        r[:, 0, 0] = 1.0
    else:
        r[:, 0, n_prefix:] = 1.0 / (n_tokens - n_prefix)
    for attn, grad in zip(reversed(attentions), reversed(grads), strict=True):
        abar = (grad * attn).clamp(min=0).mean(dim=1)
        r = r + torch.bmm(r, abar)
    return r[:, 0, n_prefix:]


def rollout(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None):
    """Gradient-weighted attention rollout. images (B, 3, H, W) -> (logits (B, K), phi (B, H, W)).

    target: (B,) class indices; default the model's own argmax. Works on DDP-wrapped models.
    """
    needs_input_grad = not any(p.requires_grad for p in model.parameters())
    x = images.detach().requires_grad_(True) if needs_input_grad else images
    with torch.enable_grad():
        with capture_attention(model) as attentions:
            logits = model(x)
        if not attentions:
            raise RuntimeError(f"no attention maps were captured from {type(unwrap(model)).__name__}")
        if target is None:
            target = logits.detach().argmax(dim=1)
        if target.shape != (logits.shape[0],):
            raise ValueError(f"target must have shape ({logits.shape[0]},), got {tuple(target.shape)}")
        score = logits.gather(1, target.long().view(-1, 1)).sum()
        grads = torch.autograd.grad(score, attentions, retain_graph=True)
        return logits, _phi_from_rollout(model, attentions, grads, tuple(images.shape[-2:]))


def _phi_from_rollout(
    model: nn.Module, attentions: list[torch.Tensor], grads: tuple[torch.Tensor, ...], size: tuple[int, int]
) -> torch.Tensor:
    n_prefix = num_prefix_tokens(model)
    patches = rollout_from_attention(attentions, [g.detach() for g in grads], n_prefix, _uses_cls_row(model))
    return _phi_from_tokens(model, patches, size)


def _phi_from_tokens(model: nn.Module, patches: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Per-patch relevance (B, P) -> Phi (B, H, W): patch grid, bilinear upsampling, min-max."""
    rows, cols = patch_grid(model)
    if patches.shape[1] != rows * cols:
        raise RuntimeError(f"{patches.shape[1]} patch tokens do not fill the {rows}x{cols} patch grid")
    return minmax(upsample(patches.reshape(-1, rows, cols), size))


def _attnlrp(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None, sign: Callable):
    logits, tokens = token_relevance(model, images, target)
    patches = sign(tokens[:, num_prefix_tokens(model) :])
    return logits, _phi_from_tokens(model, patches, tuple(images.shape[-2:]))


def attnlrp(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None):
    """AttnLRP, signed. images (B, 3, H, W) -> (logits (B, K), phi (B, H, W)); the lowest Phi is the
    most *negative* evidence; see :mod:`unspur.attnlrp`."""
    return _attnlrp(model, images, target, lambda r: r)


def attnlrp_abs(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None):
    """AttnLRP's magnitude |R|, as :func:`attnlrp`: Phi near 0 means not used for or against the class."""
    return _attnlrp(model, images, target, torch.abs)


def attnlrp_pos(model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None):
    """AttnLRP's positive part max(R, 0), as :func:`attnlrp`: evidence for the class only."""
    return _attnlrp(model, images, target, lambda r: r.clamp(min=0))


RELEVANCE: dict[str, RelevanceFn] = {
    "rollout": rollout,
    "attnlrp": attnlrp,
    "attnlrp_abs": attnlrp_abs,
    "attnlrp_pos": attnlrp_pos,
}


def relevance_map(
    model: nn.Module, images: torch.Tensor, method: str = "rollout", target: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K) and relevance Phi (B, H, W) in [0, 1] of ``images`` (B, 3, H, W).

    Phi is differentiable w.r.t. the model's parameters (through the attention maps); detach it
    for evaluation. ``method`` is a key of :data:`RELEVANCE`.
    """
    fn = RELEVANCE.get(method)
    if fn is None:
        raise ValueError(f"unknown relevance method {method!r}; choose one of {sorted(RELEVANCE)}")
    if images.ndim != 4:
        raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
    return fn(model, images, target)
