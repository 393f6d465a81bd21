"""Training objectives, one file each, in a name-keyed registry.

``LOSSES[name]`` is a :class:`LossSpec`: the objective ``fn`` (keyword arguments, returning a dict
with key ``loss`` plus every named term), the batch entries it reads (``batch_keys``: the dataset
loads only those, e.g. masks only for a loss reading ``mask``), the model outputs it reads
(``needs``: names of the model family's ``forward`` outputs) and ``inputs``, which binds the
outputs and the batch to ``fn``'s arguments. The training loop calls ``spec(outputs, batch,
cfg)``; a CLIP objective registers ``batch_keys=("image", "tokens")``, ``needs`` of its
family's feature outputs and its own ``inputs``, and the loop stays as it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from unspur.losses.cft import cft_loss
from unspur.losses.erm import erm_loss
from unspur.losses.robustvit import robustvit_loss

__all__ = ["LOSSES", "LossSpec", "classifier_inputs", "get_loss", "cft_loss", "erm_loss", "robustvit_loss"]

LossFn = Callable[..., dict[str, torch.Tensor]]
Batch = dict[str, Any]
Outputs = dict[str, torch.Tensor]


def classifier_inputs(outputs: Outputs, batch: Batch) -> dict[str, Any]:
    """The classifier losses' arguments: ``logits``, ``labels``, ``phi`` (the ``relevance``
    output), ``masks``, ``has_mask``, ``base_logits``; whatever is absent is None."""
    return {
        "logits": outputs["logits"],
        "labels": batch.get("label"),
        "phi": outputs.get("relevance"),
        "masks": batch.get("mask"),
        "has_mask": batch.get("has_mask"),
        "base_logits": outputs.get("base_logits"),
    }


@dataclass(frozen=True)
class LossSpec:
    """A registered objective and what it reads.

    ``batch_keys``: batch entries (``image``, ``label``, ``mask``, ``has_mask``, ...).
    ``needs``: model outputs (``logits``, ``relevance``, ...); ``base_logits`` is added by
    :meth:`outputs_for` when the config turns the KL guard on (``lambda_kl`` > 0).
    """

    fn: LossFn
    batch_keys: tuple[str, ...] = ("image", "label")
    needs: frozenset[str] = frozenset({"logits"})
    inputs: Callable[[Outputs, Batch], dict[str, Any]] = classifier_inputs

    @property
    def needs_relevance(self) -> bool:
        """Whether the model must produce relevance maps for this loss."""
        return "relevance" in self.needs

    def outputs_for(self, cfg: Any) -> frozenset[str]:
        """The model outputs this loss reads under ``cfg``: ``needs`` (+ ``base_logits`` with KL)."""
        if getattr(cfg, "lambda_kl", 0.0) > 0:
            return self.needs | {"base_logits"}
        return self.needs

    def __call__(self, outputs: Outputs, batch: Batch, cfg: Any) -> dict[str, torch.Tensor]:
        """The loss and its named terms for one batch's model ``outputs``."""
        return self.fn(cfg=cfg, **self.inputs(outputs, batch))


_RELEVANCE = frozenset({"logits", "relevance"})
_MASKED = ("image", "label", "mask", "has_mask")

LOSSES: dict[str, LossSpec] = {
    "erm": LossSpec(erm_loss),
    "cft": LossSpec(cft_loss, batch_keys=_MASKED, needs=_RELEVANCE),
    "robustvit": LossSpec(robustvit_loss, batch_keys=_MASKED, needs=_RELEVANCE),
}


def get_loss(name: str) -> LossSpec:
    """The registered :class:`LossSpec` called ``name`` (clear error otherwise)."""
    spec = LOSSES.get(name)
    if spec is None:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return spec
