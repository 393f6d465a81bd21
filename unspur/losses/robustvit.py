"""RobustViT objective (Chefer et al. 2022; METHODS.md 1.4 variant).

L_bg = MSE(Phi * Sbar, 0), L_fg = MSE(Phi * S, S) (means over all pixels of the image),
L = lambda_align * (lambda_bg * L_bg + lambda_fg * L_fg) + lambda_cls * CE(logits / T, argmax)
+ lambda_kl * KL(base || model); paper weights 0.8 * (2 L_bg + 0.3 L_fg) + 0.2 L_cls.
Images with an empty mask skip L_bg / L_fg and are counted in ``n_no_mask``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from unspur.losses._terms import alignment_inputs, kl_to_base, self_prediction_ce
from unspur.losses.base import MASKED, RELEVANCE, AlignmentLossConfig, register_loss

__all__ = ["RobustVitLossConfig", "robustvit_loss"]


class RobustVitLossConfig(AlignmentLossConfig):
    """``loss.name: robustvit``: lambda_align * (lambda_bg * L_bg + lambda_fg * L_fg) + lambda_cls *
    L_cls + lambda_kl * KL."""

    name: Literal["robustvit"] = "robustvit"
    lambda_bg: float = Field(2.0, ge=0)
    lambda_fg: float = Field(0.3, ge=0)


@register_loss("robustvit", RobustVitLossConfig, batch_keys=MASKED, needs=RELEVANCE)
def robustvit_loss(
    *,
    logits: torch.Tensor,
    labels: torch.Tensor,
    cfg: RobustVitLossConfig,
    phi: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    has_mask: torch.Tensor | None = None,
    base_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """logits (B, K); phi, masks (B, H, W) -> {loss, bg, fg, align, cls, kl, n_no_mask}."""
    phi, masks, keep = alignment_inputs(phi, masks, has_mask, cfg.mask_grid)
    if keep.any():
        p, s = phi[keep], masks[keep]
        bg = ((p * (1.0 - s)) ** 2).mean()
        fg = ((p * s - s) ** 2).mean()
    else:
        bg = fg = phi.sum() * 0.0
    align = cfg.lambda_bg * bg + cfg.lambda_fg * fg
    cls = self_prediction_ce(logits, cfg.temperature)
    kl = kl_to_base(logits, base_logits, cfg.lambda_kl)
    loss = cfg.lambda_align * align + cfg.lambda_cls * cls + cfg.lambda_kl * kl
    terms = {"bg": bg, "fg": fg, "align": align, "cls": cls, "kl": kl}
    out = {"loss": loss, **{k: v.detach() for k, v in terms.items()}}
    out["n_no_mask"] = (~keep).sum().to(logits.dtype).detach()
    return out
