"""Training objectives, one file each, each registering its function and config in ``LOSSES``.

``LOSSES[name]`` is a :class:`LossSpec`: ``fn(*, logits, labels, cfg, phi=None, masks=None,
has_mask=None, base_logits=None) -> dict[str, Tensor]`` (key ``loss`` plus every named term)
and ``needs_relevance`` (whether the training loop must compute Phi for it);
``LOSSES.entry(name).config`` is its config class. To add a loss, add a file here that defines
its config (``name: Literal["<name>"]`` + its weights) and decorates its function with
:func:`register_loss`, and import it below.
"""

from __future__ import annotations

from unspur.losses.base import LOSSES, AlignmentLossConfig, LossConfig, LossSpec, get_loss, register_loss
from unspur.losses.cft import CftLossConfig, cft_loss
from unspur.losses.erm import ErmLossConfig, erm_loss
from unspur.losses.robustvit import RobustVitLossConfig, robustvit_loss

__all__ = [
    "LOSSES",
    "AlignmentLossConfig",
    "CftLossConfig",
    "ErmLossConfig",
    "LossConfig",
    "LossSpec",
    "RobustVitLossConfig",
    "cft_loss",
    "erm_loss",
    "get_loss",
    "register_loss",
    "robustvit_loss",
]
