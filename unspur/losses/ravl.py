"""RaVL mitigation (Varma et al., NeurIPS 2024; METHODS.md 2.3): FLYP plus a region-aware term.

The paper publishes no code; this is unspur's reconstruction from its description. Notation:
image i of class y_i has regions r = 1..R (grid cells or masks, ``batch["regions"]``), each with
a flag from discovery (``unspur discover``'s ``flags.parquet``): s_ir = 1 when the region lies in
the discovered spurious cluster, and t_ir the class that cluster is tied to (the class of its
largest positive gap). z_ir is the L2-normalised CLIP image embedding of the region's crop,
T (C, D) the class text embeddings (per class the mean of the normalised template embeddings,
renormalised; trained with the text encoder), s the model's exp'd logit scale, and

    p_ir = softmax(s * z_ir T^T)                                       (C class probabilities)

Over the valid regions of the batch, N = {(i, r): s_ir = 0} and S = {(i, r): s_ir = 1, t_ir >= 0}:

    L_pull = (1 / |N|) sum_{(i,r) in N} -log p_ir[y_i]          (pulled toward the image's class text)
    L      = L_FLYP + lambda_pull * L_pull + lambda_push * L_push

with L_FLYP the symmetric CLIP loss on (image, class caption) (:mod:`unspur.losses.flyp`) and the
push in one of two forms (``push``):

- ``probability``: the region on its own is pushed away from the tied class text,
  L_push = (1 / |S|) sum_{(i,r) in S} -log(1 - p_ir[t_ir]) (``1 - p`` as the sum of the other
  classes' probabilities through ``logsumexp``, finite when p -> 1);
- ``contribution`` (default): the region's contribution *in context* to the image's similarity
  with the tied class text is pushed to zero or below. With f_i the normalised embedding of image
  i, e_i that of image i with every region of S zeroed (``batch["erased"]``) and t_i their tied
  class, over the images I with such a region,
  L_push = (1 / |I|) sum_{i in I} max(0, s (f_i - e_i) . T[t_i]).
  With counterfactual views (``data.region_paste``: an image j without a spurious region, shown
  with a donor's spurious region pasted in, ``batch["pasted"]``, embedding g_j, tied class t_j)
  the same hinge covers them, the pasted view against the image itself, over I and P together:
  L_push = (1 / (|I| + |P|)) [sum_{i in I} max(0, s (f_i - e_i) . T[t_i])
                              + sum_{j in P} max(0, s (g_j - f_j) . d_j)]
  with d_j = T[t_j] (``paste_target: tied``: the pasted region must not raise the similarity to
  the tied class) or d_j = T[t_j] - T[y_j] (``margin``: it must not move the image from its own
  class y_j toward the tied one). f_j is a fixed reference there (detached): the term moves the
  pasted view, never the clean image. Where the correlation is strong, images of other classes
  that carry the spurious region are rare (1% of digits-grid's train split at V = 0.9), so I holds almost only images whose own
  class is the tied one; P shows the region on every class.
  Measured on digits-grid: the red rectangle alone (crop or in place) scores digit 0 at
  p ~ 0.001-0.05, so the probability form has no gradient, while the rectangle next to a digit
  flips the image to 0 - the shortcut lives in context.

An empty N, S or I contributes 0. The region views are the dataset's (``data.region_view``: the
box crop or the region in place).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from unspur.data.torch_dataset import REGION_FIELDS
from unspur.losses.base import Batch, LossConfig, Outputs, register_loss
from unspur.losses.flyp import CLIP_BATCH, FLYP_NEEDS, clip_contrastive, flyp_inputs

__all__ = [
    "RAVL_BATCH",
    "RAVL_NEEDS",
    "RavlLossConfig",
    "contribution_push",
    "ravl_inputs",
    "ravl_loss",
    "region_terms",
]

RAVL_BATCH = (*CLIP_BATCH, *REGION_FIELDS)  # images, captions, labels and the dataset's region entries
RAVL_NEEDS = FLYP_NEEDS | {"region_features", "class_text_features", "erased_features", "pasted_features"}


def region_terms(
    region_features: torch.Tensor,
    class_text_features: torch.Tensor,
    scale: torch.Tensor | float,
    labels: torch.Tensor,
    spurious: torch.Tensor,
    tied: torch.Tensor,
    valid: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_pull, L_push of the ``probability`` form), module docstring. region_features (B, R, D), class_text_features
    (C, D), both L2-normalised; labels (B,); spurious, valid (B, R) bool; tied (B, R) int."""
    if region_features.ndim != 3 or spurious.shape != region_features.shape[:2]:
        raise ValueError(
            f"region_features {tuple(region_features.shape)} must be (B, R, D) and the flags "
            f"{tuple(spurious.shape)} (B, R)"
        )
    logits = scale * region_features @ class_text_features.T  # (B, R, C)
    log_p = F.log_softmax(logits.float(), dim=-1)
    pull_set = valid & ~spurious
    target = labels.view(-1, 1).expand_as(spurious)
    pull_nll = -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    pull = pull_nll[pull_set].mean() if pull_set.any() else log_p.new_zeros(())
    push_set = valid & spurious & (tied >= 0)
    if push_set.any():
        tied_idx = tied.clamp(min=0).unsqueeze(-1)
        others = log_p.scatter(-1, tied_idx, float("-inf"))  # log(1 - p_t) = logsumexp over the others
        push = -torch.logsumexp(others, dim=-1)[push_set].mean()
    else:
        push = log_p.new_zeros(())
    return pull, push


def contribution_push(
    image_features: torch.Tensor,
    erased_features: torch.Tensor,
    class_text_features: torch.Tensor,
    scale: torch.Tensor | float,
    tied: torch.Tensor,
    pasted_features: torch.Tensor | None = None,
    pasted_tied: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_push of the ``contribution`` form (module docstring): image_features, erased_features,
    pasted_features (B, D) and class_text_features (C, D) L2-normalised, tied (B,) int (-1: the
    image has no spurious region), pasted_tied (B,) int (-1: no counterfactual view); with
    ``labels`` (B,) the pasted views' direction is the margin T[t] - T[y], else T[t]."""
    has = tied >= 0
    gains = [((image_features[has] - erased_features[has]) * class_text_features[tied[has]]).sum(-1)]
    if pasted_features is not None and pasted_tied is not None:
        has = pasted_tied >= 0
        direction = class_text_features[pasted_tied[has]]
        if labels is not None:
            direction = direction - class_text_features[labels[has]]
        gains.append(((pasted_features[has] - image_features[has].detach()) * direction).sum(-1))
    gain = torch.cat(gains)
    if not len(gain):
        return image_features.new_zeros(())
    return F.relu(scale * gain.float()).mean()


def ravl_inputs(outputs: Outputs, batch: Batch) -> dict[str, Any]:
    """RaVL's arguments: FLYP's, the region and class-text features and the region flags."""
    return {
        **flyp_inputs(outputs, batch),
        "region_features": outputs["region_features"],
        "class_text_features": outputs["class_text_features"],
        "region_spurious": batch["region_spurious"],
        "region_tied": batch["region_tied"],
        "region_valid": batch["region_valid"],
        "erased_features": outputs["erased_features"],
        "erased_tied": batch["erased_tied"],
        "pasted_features": outputs["pasted_features"],
        "pasted_tied": batch["pasted_tied"],
    }


class RavlLossConfig(LossConfig):
    """``loss.name: ravl``: FLYP + ``lambda_pull`` L_pull + ``lambda_push`` L_push (module docstring);
    ``push``: ``contribution`` (in context) or ``probability`` (the region alone);
    ``paste_target``: what a pasted region must not raise, the tied class or its margin over the
    image's own class (counterfactual views, ``data.region_paste``); ``scale``: the
    temperature of the region logits (None = the model's logit scale)."""

    name: Literal["ravl"] = "ravl"
    lambda_pull: float = Field(1.0, ge=0)
    lambda_push: float = Field(1.0, ge=0)
    push: Literal["contribution", "probability"] = "contribution"
    paste_target: Literal["tied", "margin"] = "tied"
    scale: float | None = Field(None, gt=0, description="None = the model's exp'd logit scale")


@register_loss("ravl", RavlLossConfig, batch_keys=RAVL_BATCH, needs=RAVL_NEEDS, inputs=ravl_inputs)
def ravl_loss(
    *,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    region_features: torch.Tensor,
    class_text_features: torch.Tensor,
    region_spurious: torch.Tensor,
    region_tied: torch.Tensor,
    region_valid: torch.Tensor,
    erased_features: torch.Tensor,
    erased_tied: torch.Tensor,
    cfg: RavlLossConfig,
    pasted_features: torch.Tensor | None = None,
    pasted_tied: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """-> {"loss", "contrastive", "pull", "push", "logit_scale"} (all but ``loss`` detached)."""
    if labels is None:
        raise ValueError("loss ravl pulls regions toward their image's class text: the batch needs label")
    contrastive = clip_contrastive(image_features, text_features, logit_scale)
    scale = logit_scale if cfg.scale is None else cfg.scale
    pull, push = region_terms(
        region_features,
        class_text_features,
        scale,
        labels,
        region_spurious.bool(),
        region_tied.long(),
        region_valid.bool(),
    )
    if cfg.push == "contribution":
        push = contribution_push(
            image_features,
            erased_features,
            class_text_features,
            scale,
            erased_tied.long(),
            pasted_features,
            None if pasted_tied is None else pasted_tied.long(),
            labels.long() if cfg.paste_target == "margin" else None,
        )
    loss = (
        contrastive
        + cfg.lambda_pull * pull.to(contrastive.dtype)
        + cfg.lambda_push * push.to(contrastive.dtype)
    )
    return {
        "loss": loss,
        "contrastive": contrastive.detach(),
        "pull": pull.detach(),
        "push": push.detach(),
        "logit_scale": torch.as_tensor(logit_scale, device=loss.device).detach().reshape(()).to(loss.dtype),
    }
