"""FLYP (Goyal et al., CVPR 2023): fine-tune CLIP like it was pretrained (METHODS.md 3).

The symmetric CLIP contrastive loss between each image and its class caption
("a photo of a {class}."), image and text encoders both trained:
logits = s * f(x) g(t)^T (B x B, ``s`` the model's exp'd logit scale, features L2-normalised),
L = (CE(logits, diag) + CE(logits^T, diag)) / 2.

Duplicate captions: a batch holds several images of one class, so several rows carry the same
caption, and with diagonal targets the copies on the other rows count as negatives. The
released FLYP code (and StarFT, built on it) keeps these plain diagonal targets (open_clip's
``ClipLoss``: target of row i is column i), and so does this loss; ``labels`` are read only by
losses built on this one (StarFT's same-class mask).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from unspur.losses.base import Batch, LossConfig, Outputs, register_loss

__all__ = ["CLIP_BATCH", "FLYP_NEEDS", "FlypLossConfig", "clip_contrastive", "flyp_inputs", "flyp_loss"]

#: what the CLIP losses read from the batch: images, class-caption tokens, labels
CLIP_BATCH = ("image", "tokens", "label")
#: model outputs FLYP reads: (B, D) L2-normalised image features and text features of
#: ``batch["tokens"]``, and the model's logit scale (a scalar tensor, already exp'd)
FLYP_NEEDS = frozenset({"image_features", "text_features", "logit_scale"})


def clip_contrastive(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """The symmetric CLIP loss: image_features, text_features (B, D) L2-normalised (row i of
    each is one pair); mean of the row and column cross-entropies against the diagonal."""
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise ValueError(
            f"image_features {tuple(image_features.shape)} and text_features "
            f"{tuple(text_features.shape)} must both be (B, D)"
        )
    logits = logit_scale * image_features @ text_features.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def flyp_inputs(outputs: Outputs, batch: Batch) -> dict[str, Any]:
    """FLYP's arguments: the three :data:`FLYP_NEEDS` outputs and ``labels``."""
    return {
        "image_features": outputs["image_features"],
        "text_features": outputs["text_features"],
        "logit_scale": outputs["logit_scale"],
        "labels": batch.get("label"),
    }


class FlypLossConfig(LossConfig):
    """``loss.name: flyp``: the CLIP contrastive loss on (image, class caption) pairs; no weights."""

    name: Literal["flyp"] = "flyp"


@register_loss("flyp", FlypLossConfig, batch_keys=CLIP_BATCH, needs=FLYP_NEEDS, inputs=flyp_inputs)
def flyp_loss(
    *,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    cfg: FlypLossConfig,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """(B, D) features, scalar exp'd scale -> {"loss", "contrastive", "logit_scale"} (the last two
    detached; the scale is logged to watch it drift). ``labels`` are not used (diagonal targets)."""
    loss = clip_contrastive(image_features, text_features, logit_scale)
    scale = torch.as_tensor(logit_scale, dtype=loss.dtype, device=loss.device).detach().reshape(())
    return {"loss": loss, "contrastive": loss.detach(), "logit_scale": scale}
