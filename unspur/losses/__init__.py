"""Training objectives, one file each, in a name-keyed registry.

``LOSSES[name]`` is a :class:`LossSpec`: ``fn(*, logits, labels, cfg, phi=None, masks=None,
has_mask=None, base_logits=None) -> dict[str, Tensor]`` (key ``loss`` plus every named term)
and ``needs_relevance`` (whether the training loop must compute Phi for it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from unspur.losses.cft import cft_loss
from unspur.losses.erm import erm_loss
from unspur.losses.robustvit import robustvit_loss

__all__ = ["LOSSES", "LossSpec", "get_loss", "cft_loss", "erm_loss", "robustvit_loss"]

LossFn = Callable[..., dict[str, torch.Tensor]]


@dataclass(frozen=True)
class LossSpec:
    """A registered objective: its function and whether it needs relevance maps."""

    fn: LossFn
    needs_relevance: bool


LOSSES: dict[str, LossSpec] = {
    "erm": LossSpec(erm_loss, needs_relevance=False),
    "cft": LossSpec(cft_loss, needs_relevance=True),
    "robustvit": LossSpec(robustvit_loss, needs_relevance=True),
}


def get_loss(name: str) -> LossSpec:
    """The registered :class:`LossSpec` called ``name`` (clear error otherwise)."""
    spec = LOSSES.get(name)
    if spec is None:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return spec
