"""Training objectives, one file each, each registering its function and config in ``LOSSES``.

``LOSSES[name]`` is a :class:`LossSpec`: the objective ``fn`` (keyword arguments, returning a dict
with key ``loss`` plus every named term), the batch entries it reads (``batch_keys``), the model
outputs it reads (``needs``: names of the model family's ``forward`` outputs) and ``inputs``,
which binds the outputs and the batch to ``fn``'s arguments; ``LOSSES.entry(name).config`` is its
config class. The training loop calls ``spec(outputs, batch, cfg)``: a CLIP objective registers
``batch_keys=("image", "tokens")`` and its family's feature outputs, and the loop stays as it is. To add a loss, add a file here that defines
its config (``name: Literal["<name>"]`` + its weights) and decorates its function with
:func:`register_loss`, and import it below.
"""

from __future__ import annotations

from unspur.losses.base import (
    LOSSES,
    AlignmentLossConfig,
    LossConfig,
    LossSpec,
    classifier_inputs,
    get_loss,
    register_loss,
)
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
    "classifier_inputs",
    "erm_loss",
    "get_loss",
    "register_loss",
    "robustvit_loss",
]
