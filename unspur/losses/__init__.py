"""Training objectives, one file each, each registering its function and config in ``LOSSES``.

``LOSSES[name]`` is a :class:`LossSpec`: the objective ``fn`` (keyword arguments, returning a dict
with key ``loss`` plus every named term), the batch entries it reads (``batch_keys``), the model
outputs it reads (``needs``: names of the model family's ``forward`` outputs) and ``inputs``,
which binds the outputs and the batch to ``fn``'s arguments; ``LOSSES.entry(name).config`` is its
config class. The training loop calls ``spec(outputs, batch, cfg)``; the CLIP objectives (``flyp``,
``starft``, ``ravl``) register ``batch_keys`` with caption tokens and their family's feature outputs, and the
loop stays as it is. The loop also puts ``epoch`` and ``epochs`` into every batch, for weights on a
schedule (StarFT's decay). To add a loss, add a file here that defines
its config (``name: Literal["<name>"]`` + its weights) and decorates its function with
:func:`register_loss`, and import it below. ``seraser.py`` holds SEraser's test-time objective
(prompt tuning per test image, :mod:`unspur.seraser`): not a training loss, so not in ``LOSSES``.
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
from unspur.losses.flyp import FlypLossConfig, flyp_loss
from unspur.losses.ravl import RavlLossConfig, ravl_loss
from unspur.losses.robustvit import RobustVitLossConfig, robustvit_loss
from unspur.losses.starft import StarftLossConfig, starft_loss

__all__ = [
    "LOSSES",
    "AlignmentLossConfig",
    "CftLossConfig",
    "ErmLossConfig",
    "FlypLossConfig",
    "LossConfig",
    "LossSpec",
    "RavlLossConfig",
    "RobustVitLossConfig",
    "StarftLossConfig",
    "cft_loss",
    "classifier_inputs",
    "erm_loss",
    "flyp_loss",
    "get_loss",
    "ravl_loss",
    "register_loss",
    "robustvit_loss",
    "starft_loss",
]
