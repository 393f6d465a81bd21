"""ERM: plain cross-entropy on the labels (the baseline and the base-model recipe)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from unspur.losses.base import LossConfig, register_loss

__all__ = ["ErmLossConfig", "erm_loss"]


class ErmLossConfig(LossConfig):
    """``loss.name: erm``: cross-entropy on the labels; no weights."""

    name: Literal["erm"] = "erm"


@register_loss("erm", ErmLossConfig)
def erm_loss(
    *,
    logits: torch.Tensor,
    labels: torch.Tensor,
    cfg: ErmLossConfig,
    phi: torch.Tensor | None = None,
    masks: torch.Tensor | None = None,
    has_mask: torch.Tensor | None = None,
    base_logits: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """logits (B, K), labels (B,) -> {"loss", "ce"}; relevance inputs are ignored."""
    ce = F.cross_entropy(logits, labels.long())
    return {"loss": ce, "ce": ce.detach()}
