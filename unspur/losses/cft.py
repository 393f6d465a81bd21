"""CFT objective (METHODS.md 1.4): relevance on concepts, off the rest, keep predictions.

With S the concept mask, Sbar = 1 - S, Phi in [0, 1], eps = 1e-6:
L_concept = -mean_{p in S} log(Phi_p + eps), L_non = -mean_{p in Sbar} log(1 - Phi_p + eps),
L_align = lambda_concept * L_concept + lambda_non * L_non, L_cls = CE(logits / T, argmax),
L = lambda_align * L_align + lambda_cls * L_cls + lambda_kl * KL(base || model).
``normalize="region"`` divides by |S| and |Sbar| (paper); ``"image"`` by H*W (released code).
Images with an empty mask skip the alignment terms and are counted in ``n_no_mask``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from unspur.losses._terms import alignment_inputs, kl_to_base, self_prediction_ce
from unspur.losses.base import MASKED, RELEVANCE, AlignmentLossConfig, register_loss

__all__ = ["CftLossConfig", "cft_loss", "concept_terms"]

EPS = 1e-6


def concept_terms(
    phi: torch.Tensor, masks: torch.Tensor, normalize: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image L_concept and L_non_concept, each (B,). phi, masks: (B, H, W), masks {0, 1}."""
    pos = -(torch.log(phi + EPS) * masks).flatten(1).sum(1)
    neg = -(torch.log(1.0 - phi + EPS) * (1.0 - masks)).flatten(1).sum(1)
    if normalize == "region":
        n_pos = masks.flatten(1).sum(1)
        n_neg = masks[0].numel() - n_pos
        return pos / n_pos.clamp_min(1.0), neg / n_neg.clamp_min(1.0)
    if normalize == "image":
        pixels = float(masks[0].numel())
        return pos / pixels, neg / pixels
    raise ValueError(f"loss.normalize must be 'region' or 'image', got {normalize!r}")


class CftLossConfig(AlignmentLossConfig):
    """``loss.name: cft``: lambda_align * (lambda_concept * L_concept + lambda_non * L_non_concept)
    + lambda_cls * CE(logits / T, argmax) + lambda_kl * KL(base || model). ``normalize``: ``region``
    averages the concept / non-concept terms over |S| / |Sbar| (paper), ``image`` over all H*W
    pixels (released code)."""

    name: Literal["cft"] = "cft"
    lambda_concept: float = Field(0.5, ge=0)
    lambda_non: float = Field(1.2, ge=0)
    normalize: Literal["region", "image"] = "region"


@register_loss("cft", CftLossConfig, batch_keys=MASKED, needs=RELEVANCE)
def cft_loss(
    *,
    logits: torch.Tensor,
    labels: torch.Tensor,
    cfg: CftLossConfig,
    phi: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    has_mask: torch.Tensor | None = None,
    base_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """logits (B, K); phi, masks (B, H, W); has_mask (B,) bool -> dict of the loss and its terms.

    Keys: loss, concept, non_concept, align, cls, kl, n_no_mask (all but ``loss`` detached).
    ``labels`` are not used (the classification term is self-prediction).
    """
    phi, masks, keep = alignment_inputs(phi, masks, has_mask, cfg.mask_grid)
    if keep.any():
        concept, non = concept_terms(phi[keep], masks[keep], cfg.normalize)
        concept, non = concept.mean(), non.mean()
    else:
        concept = non = phi.sum() * 0.0
    align = cfg.lambda_concept * concept + cfg.lambda_non * non
    cls = self_prediction_ce(logits, cfg.temperature)
    kl = kl_to_base(logits, base_logits, cfg.lambda_kl)
    loss = cfg.lambda_align * align + cfg.lambda_cls * cls + cfg.lambda_kl * kl
    terms = {"concept": concept, "non_concept": non, "align": align, "cls": cls, "kl": kl}
    out = {"loss": loss, **{k: v.detach() for k, v in terms.items()}}
    out["n_no_mask"] = (~keep).sum().to(logits.dtype).detach()
    return out
