"""ERM: plain cross-entropy on the labels (the baseline and the base-model recipe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unspur.config import LossConfig

__all__ = ["erm_loss"]


def erm_loss(
    *,
    logits: torch.Tensor,
    labels: torch.Tensor,
    cfg: LossConfig,
    phi: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    has_mask: torch.Tensor | None = None,
    base_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """logits (B, K), labels (B,) -> {"loss", "ce"}; relevance inputs are ignored."""
    ce = F.cross_entropy(logits, labels.long())
    return {"loss": ce, "ce": ce.detach()}
