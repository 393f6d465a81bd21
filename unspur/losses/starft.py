"""StarFT (Kim et al., IJCAI 2025): FLYP plus spuriosity alignment with the zero-shot model.

METHODS.md 3. Each sample carries one spurious caption t~ (a template of the concept bank's
``spurious_templates`` with its class filled in, ``batch["spurious_tokens"]``). Over the batch:

- teacher z_T = s0 * f0(x) g0(t~)^T from the frozen initial model, student
  z_S = s0 * f(x) g(t~)^T, both (B, B), s0 = the initial model's exp'd logit scale for both;
- entries with label_i == label_j (the diagonal included) are set to -1e8, so each row is a
  distribution over the spurious captions of the *other* classes;
- R = KL(softmax(z_T) || softmax(z_S)), batchmean;
- L = L_FLYP + lambda_e * R with lambda_e = lam * (1 - (e + 1) / E) (e = 0..E-1: linear decay,
  0 at the last epoch), or lam throughout with ``decay: none``.

The epoch reaches the loss through the batch: the training loop puts ``epoch`` (0-based) and
``epochs`` (E) into every batch dict (``unspur.training.train_one_epoch(epoch=, epochs=)``).

Model outputs read (the CLIP family produces them): ``image_features``, ``text_features`` (of
``batch["tokens"]``), ``logit_scale`` (student, exp'd) as FLYP; ``spurious_text_features`` (the
student's (B, D) features of ``batch["spurious_tokens"]``); ``teacher_image_features``,
``teacher_spurious_text_features`` ((B, D), from the frozen initial model) and
``teacher_logit_scale`` (its exp'd scale, s0). All features L2-normalised.

``kl_scale``: None uses s0 as in the paper. A tiny CLIP trained here keeps its logit scale near
14, and at that scale both softmaxes over the spurious captions are nearly flat, so R is tiny
(0.001-0.06) whatever the model does; a number replaces s0 in both the teacher's and the
student's logits (a prototype needed 100, with lam 50). Choose it on validation.

``kl_part`` (an ablation; ``full``, the paper's, is the default): over the class c of each
column the chain rule splits R into a class-marginal term KL(P_T || P_S), P(c) = a row's mass on
class c's captions (which *other class* the image resembles), and a within-class term
sum_c P_T(c) KL(p_T(.|c) || p_S(.|c)) (which spurious *words* it resembles among one class's
captions); ``class_marginal`` or ``within_class`` keeps one. benchmarks/starft_kl_parts.py
measures both terms for FLYP and StarFT; benchmarks/README.md "StarFT effect" what each alone did.

Cost: the teacher is frozen, so its text features for the finite set of spurious captions, and
its image features of un-augmented inputs, can be computed once and cached instead of every
step (a naive step costs about 1.5x a FLYP step). That cache belongs to the model family, which
computes the ``teacher_*`` outputs; this loss only reads them (and detaches them).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from unspur.losses.base import Batch, LossConfig, Outputs, register_loss
from unspur.losses.flyp import FLYP_NEEDS, clip_contrastive, flyp_inputs

__all__ = [
    "MASK_VALUE",
    "STARFT_BATCH",
    "STARFT_NEEDS",
    "StarftLossConfig",
    "decayed_weight",
    "spuriosity_kl",
    "starft_inputs",
    "starft_loss",
]

MASK_VALUE = -1e8
STARFT_BATCH = ("image", "tokens", "spurious_tokens", "label")
STARFT_NEEDS = FLYP_NEEDS | {
    "spurious_text_features",
    "teacher_image_features",
    "teacher_spurious_text_features",
    "teacher_logit_scale",
}


def decayed_weight(lam: float, epoch: int, epochs: int, decay: str = "linear") -> float:
    """lambda_e = lam * (1 - (epoch + 1) / epochs) for ``linear`` (epoch 0-based), lam for ``none``."""
    if decay == "none":
        return float(lam)
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, epochs) with epochs >= 1, got epoch={epoch}, epochs={epochs}")
    return float(lam) * (1.0 - (epoch + 1) / epochs)


def spuriosity_kl(
    image_features: torch.Tensor,
    spurious_text_features: torch.Tensor,
    teacher_image_features: torch.Tensor,
    teacher_spurious_text_features: torch.Tensor,
    labels: torch.Tensor,
    scale: torch.Tensor | float,
    part: str = "full",
) -> torch.Tensor:
    """R = KL(softmax(z_T) || softmax(z_S)) over rows, batchmean; features (B, D), labels (B,).

    ``part`` keeps one term of the KL's chain rule over the class of each column, where P(c) is
    a row's mass on class c's captions and p(. | c) its distribution among them:
    ``class_marginal`` KL(P_T || P_S), ``within_class`` sum_c P_T(c) KL(p_T(. | c) || p_S(. | c));
    ``full`` (default) is their sum, the paper's R.

    z = scale * image @ spurious_text^T for the student and the teacher (teacher detached),
    entries with equal labels set to :data:`MASK_VALUE`; computed in float32 (the mask value
    overflows half precision)."""
    scale = torch.as_tensor(scale, device=image_features.device, dtype=torch.float32).detach()
    z_s = scale * image_features.float() @ spurious_text_features.float().T
    with torch.no_grad():
        z_t = scale * teacher_image_features.float() @ teacher_spurious_text_features.float().T
    same = labels.reshape(-1, 1) == labels.reshape(1, -1)
    if same.shape != z_s.shape or z_t.shape != z_s.shape:
        raise ValueError(
            f"labels ({labels.numel()}), student logits {tuple(z_s.shape)} and teacher logits "
            f"{tuple(z_t.shape)} must cover the same B samples"
        )
    log_p_s = F.log_softmax(z_s.masked_fill(same, MASK_VALUE), dim=1)
    log_p_t = F.log_softmax(z_t.masked_fill(same, MASK_VALUE), dim=1)
    if part == "full":
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    if part not in ("within_class", "class_marginal"):
        raise ValueError(f"part must be 'full', 'within_class' or 'class_marginal', got {part!r}")
    # chain rule over the class c of column j: p(j) = P(c) p(j | c), so
    # KL(p_T || p_S) = KL(P_T || P_S) [class-marginal] + sum_c P_T(c) KL(p_T(.|c) || p_S(.|c)).
    _, col = labels.reshape(-1).unique(return_inverse=True)  # the class index of column j
    log_onehot = F.one_hot(col).float().log().unsqueeze(0)  # (1, B, C): 0 on j's class, -inf elsewhere
    log_cls_t = torch.logsumexp(log_p_t.unsqueeze(2) + log_onehot, dim=1)  # (B, C): log P(c) per row
    log_cls_s = torch.logsumexp(log_p_s.unsqueeze(2) + log_onehot, dim=1)
    if part == "class_marginal":  # a row's own class has mass 0 (masked): its term vanishes
        return (log_cls_t.exp() * (log_cls_t - log_cls_s)).sum() / len(labels)
    cond_t = log_p_t - log_cls_t[:, col]  # log p(j | c): log p(j) - log P(c)
    cond_s = log_p_s - log_cls_s[:, col]
    p_t = log_p_t.exp()  # P_T(c) p_T(j | c): the within-class KL's weights, zero on masked entries
    return (p_t * (cond_t - cond_s)).sum() / len(labels)


def starft_inputs(outputs: Outputs, batch: Batch) -> dict[str, Any]:
    """StarFT's arguments: FLYP's, the four spurious / teacher outputs, ``epoch`` and ``epochs``
    (put into every batch by the training loop)."""
    missing = [k for k in ("epoch", "epochs") if k not in batch]
    if missing:
        raise ValueError(
            f"loss starft decays its weight over epochs but the batch has no {missing}: call "
            "train_one_epoch(..., epoch=e, epochs=E) (fit and the finetune job do)"
        )
    return {
        **flyp_inputs(outputs, batch),
        **{k: outputs[k] for k in sorted(STARFT_NEEDS - FLYP_NEEDS)},
        "epoch": int(batch["epoch"]),
        "epochs": int(batch["epochs"]),
    }


class StarftLossConfig(LossConfig):
    """``loss.name: starft``: FLYP + lambda_e * KL(teacher || student) on spurious captions.

    ``lam``: lambda (0.5 in the paper); ``decay``: ``linear`` (lambda_e = lam * (1 - (e+1)/E),
    the paper's) or ``none``; ``kl_scale``: the scale of both KL logits (None = the initial
    model's logit scale s0, the paper's; see the module docstring for why to raise it);
    ``kl_part``: ``full`` (the paper's R) or one term of its chain rule over classes,
    ``class_marginal`` or ``within_class`` (an ablation; see the module docstring)."""

    name: Literal["starft"] = "starft"
    lam: float = Field(0.5, ge=0)
    decay: Literal["linear", "none"] = "linear"
    kl_scale: float | None = Field(None, gt=0, description="None = the initial logit scale s0")
    kl_part: Literal["full", "within_class", "class_marginal"] = "full"


@register_loss("starft", StarftLossConfig, batch_keys=STARFT_BATCH, needs=STARFT_NEEDS, inputs=starft_inputs)
def starft_loss(
    *,
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    spurious_text_features: torch.Tensor,
    teacher_image_features: torch.Tensor,
    teacher_spurious_text_features: torch.Tensor,
    teacher_logit_scale: torch.Tensor,
    labels: torch.Tensor,
    epoch: int,
    epochs: int,
    cfg: StarftLossConfig,
) -> dict[str, torch.Tensor]:
    """(B, D) features, scalar scales, labels (B,) -> {"loss", "contrastive", "kl", "lambda_e",
    "logit_scale"} (all but ``loss`` detached; ``kl`` is R before its weight)."""
    contrastive = clip_contrastive(image_features, text_features, logit_scale)
    scale = teacher_logit_scale if cfg.kl_scale is None else cfg.kl_scale
    kl = spuriosity_kl(
        image_features,
        spurious_text_features,
        teacher_image_features,
        teacher_spurious_text_features,
        labels,
        scale,
        cfg.kl_part,
    ).to(contrastive.dtype)
    weight = decayed_weight(cfg.lam, epoch, epochs, cfg.decay)
    loss = contrastive + weight * kl
    detached = {
        "contrastive": contrastive.detach(),
        "kl": kl.detach(),
        "lambda_e": torch.tensor(weight, dtype=loss.dtype, device=loss.device),
        "logit_scale": torch.as_tensor(logit_scale, device=loss.device).detach().reshape(()).to(loss.dtype),
    }
    return {"loss": loss, **detached}
