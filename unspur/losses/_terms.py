"""Terms shared by the relevance-guided losses: input checks, self-prediction CE, KL guard."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["alignment_inputs", "kl_to_base", "self_prediction_ce"]


def self_prediction_ce(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """CE(logits / T, argmax logits): keeps the model's own predictions (METHODS.md 1.4)."""
    target = logits.detach().argmax(dim=1)
    return F.cross_entropy(logits / temperature, target)


def kl_to_base(logits: torch.Tensor, base_logits: torch.Tensor | None, weight: float) -> torch.Tensor:
    """KL(softmax(base) || softmax(model)), batch mean; 0 when ``weight`` is 0.

    base_logits: (B, K) from the frozen base model (no gradient). Raises if ``weight`` > 0 and
    no base logits were given.
    """
    if weight == 0:
        return logits.new_zeros(())
    if base_logits is None:
        raise ValueError(
            "loss.lambda_kl > 0 needs base_logits from the frozen base model; "
            "pass base_logits= or set loss.lambda_kl=0"
        )
    if base_logits.shape != logits.shape:
        raise ValueError(
            f"base_logits shape {tuple(base_logits.shape)} != logits shape {tuple(logits.shape)}"
        )
    return F.kl_div(
        F.log_softmax(logits, dim=1),
        F.log_softmax(base_logits.detach(), dim=1),
        reduction="batchmean",
        log_target=True,
    )


def alignment_inputs(
    phi: torch.Tensor | None, masks: torch.Tensor | None, has_mask: torch.Tensor | None, grid: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check phi (B, H, W) and masks (B, H, W) -> (phi, masks as float {0,1}, keep (B,) bool).

    ``keep`` marks images with a non-empty mask (and ``has_mask`` true when given): only those
    enter the alignment terms. ``grid`` > 0 (``loss.mask_grid``): every grid x grid cell that
    holds any mask pixel becomes wholly mask (max-pool, then nearest upsampling).
    """
    if phi is None or masks is None:
        raise ValueError(
            "this loss needs phi (relevance maps) and masks; the training loop must "
            "compute relevance for losses that need the relevance output"
        )
    if phi.shape != masks.shape:
        raise ValueError(
            f"masks shape {tuple(masks.shape)} != relevance shape {tuple(phi.shape)}; "
            "resize masks to the image size (nearest) before the loss"
        )
    masks = (masks > 0.5).to(phi.dtype)
    if grid > 0:
        h, w = masks.shape[-2:]
        if h % grid or w % grid:
            raise ValueError(
                f"loss.mask_grid {grid} does not divide the mask size {h}x{w}; use the "
                "model's patch size (or 0 for pixel masks)"
            )
        cells = torch.nn.functional.max_pool2d(masks[:, None], grid)
        masks = torch.nn.functional.interpolate(cells, scale_factor=grid, mode="nearest")[:, 0]
    keep = masks.flatten(1).sum(1) > 0
    if has_mask is not None:
        keep = keep & has_mask.to(device=keep.device, dtype=torch.bool)
    return phi, masks, keep
