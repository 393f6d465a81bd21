"""SEraser's test-time objective (METHODS.md 4), per image episode.

Not a training loss (it is not in ``LOSSES``): the prompt tuner (:mod:`unspur.seraser`) calls it at
every step with the logits of ``P`` episodes at once (``P`` images, each its own prompt context):

- ``kl_bg``  = KL(U || p(y | x_bg)), mean over the background views (the background views and
  the all-fill image): background predictions are pushed to uniform;
- ``entropy_fg`` = H(p(y | x_fg)), mean over the foreground views (``fg_term: entropy``, as
  published), or ``kl_fg`` = KL(p_0(y | x_fg) || p(y | x_fg)) to the untuned prompt's foreground
  prediction (``fg_term: kl_reference``, the variant);
- ``ce_raw`` (only with ``raw_logits``) = CE(p(y | x), argmax_y mean_views logit(y | x_fg)): the
  raw image pulled toward the foreground views' pseudo-label (the released code's ``LABEL``
  option; not in the paper's objective, off unless ``lambda_label`` > 0);
- ``loss`` = sum over episodes of ``lambda_bg * kl_bg + lambda_fg * <fg term> + lambda_label *
  ce_raw``: a sum, so each episode's context gets exactly the gradient it would get alone.

Shapes: ``fg_logits`` (P, Vf, C), ``bg_logits`` (P, Vb, C), ``fg_reference_logits`` (P, Vf, C),
``raw_logits`` (P, C). The named terms are per episode, (P,).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["FG_TERMS", "FgTerm", "entropy", "foreground_label_ce", "kl_to_uniform", "seraser_objective"]

FgTerm = Literal["entropy", "kl_reference"]
FG_TERMS: tuple[str, ...] = ("entropy", "kl_reference")


def kl_to_uniform(logits: torch.Tensor) -> torch.Tensor:
    """(..., V, C) logits -> (...,) KL(U || softmax), mean over the V views. KL(U || p) =
    -log C - mean_c log p_c."""
    log_p = F.log_softmax(logits, dim=-1)
    return (-math.log(logits.shape[-1]) - log_p.mean(-1)).mean(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(..., V, C) logits -> (...,) entropy of softmax (nats), mean over the V views."""
    log_p = F.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean(-1)


def _kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """(..., V, C) -> (...,) KL(softmax(reference) || softmax(logits)), mean over the V views."""
    ref = F.log_softmax(reference_logits.detach(), dim=-1)
    return (ref.exp() * (ref - F.log_softmax(logits, dim=-1))).sum(-1).mean(-1)


def foreground_label_ce(raw_logits: torch.Tensor, fg_logits: torch.Tensor) -> torch.Tensor:
    """(P, C) raw-image logits, (P, Vf, C) foreground logits -> (P,) cross-entropy of the raw image
    toward the class of the highest mean foreground logit (the pseudo-label, no gradient)."""
    pseudo = fg_logits.detach().mean(1).argmax(-1)
    return F.cross_entropy(raw_logits, pseudo, reduction="none")


def seraser_objective(
    fg_logits: torch.Tensor,
    bg_logits: torch.Tensor,
    *,
    fg_term: FgTerm = "entropy",
    fg_reference_logits: torch.Tensor | None = None,
    lambda_bg: float = 1.0,
    lambda_fg: float = 1.0,
    raw_logits: torch.Tensor | None = None,
    lambda_label: float = 0.0,
) -> dict[str, torch.Tensor]:
    """``{"loss": (), "episode": (P,) each episode's weighted loss, "kl_bg": (P,), "entropy_fg" or
    "kl_fg": (P,)[, "ce_raw": (P,)]}``; see the module docstring (``ce_raw`` when ``raw_logits`` is
    given)."""
    if fg_logits.dim() != 3 or bg_logits.dim() != 3 or fg_logits.shape[::2] != bg_logits.shape[::2]:
        raise ValueError(
            f"fg_logits (P, Vf, C) and bg_logits (P, Vb, C) must agree on P and C; got "
            f"{tuple(fg_logits.shape)} and {tuple(bg_logits.shape)}"
        )
    kl_bg = kl_to_uniform(bg_logits)
    if fg_term == "entropy":
        name, fg = "entropy_fg", entropy(fg_logits)
    elif fg_term == "kl_reference":
        if fg_reference_logits is None or fg_reference_logits.shape != fg_logits.shape:
            raise ValueError("fg_term kl_reference needs fg_reference_logits shaped like fg_logits")
        name, fg = "kl_fg", _kl(fg_reference_logits, fg_logits)
    else:
        raise ValueError(f"unknown fg_term {fg_term!r}; choose one of {FG_TERMS}")
    episode = lambda_bg * kl_bg + lambda_fg * fg
    out = {"kl_bg": kl_bg.detach(), name: fg.detach()}
    if raw_logits is not None:
        if raw_logits.shape != (fg_logits.shape[0], fg_logits.shape[2]):
            raise ValueError(
                f"raw_logits must be (P, C) = {(fg_logits.shape[0], fg_logits.shape[2])}; got {tuple(raw_logits.shape)}"
            )
        ce_raw = foreground_label_ce(raw_logits, fg_logits)
        episode = episode + lambda_label * ce_raw
        out["ce_raw"] = ce_raw.detach()
    return {"loss": episode.sum(), "episode": episode.detach(), **out}
