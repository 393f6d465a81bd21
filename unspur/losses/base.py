"""The loss registry and the base of every loss's config.

A loss file defines its config class (``name: Literal["<its name>"]`` plus its own weights) and
registers both with :func:`register_loss` (and what the loss reads: batch entries, model
outputs); ``loss:`` in a
YAML config is validated against the config class its ``name`` picks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field

from unspur.config.base import StrictModel
from unspur.registry import Registry

__all__ = [
    "LOSSES",
    "MASKED",
    "RELEVANCE",
    "AlignmentLossConfig",
    "LossConfig",
    "LossSpec",
    "classifier_inputs",
    "get_loss",
    "register_loss",
]

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


#: outputs named ``teacher_*`` come from the frozen initial model (``base_model``)
BASE_PREFIX = "teacher_"


@dataclass(frozen=True)
class LossSpec:
    """A registered objective and what it reads.

    ``batch_keys``: batch entries (``image``, ``label``, ``mask``, ``has_mask``, ...; the dataset
    loads only those). ``needs``: model outputs (``logits``, ``relevance``, ...: names of the model
    family's ``forward`` outputs); ``base_logits`` is added by :meth:`outputs_for` when the config
    turns the KL guard on (``lambda_kl`` > 0). ``inputs`` binds the outputs and the batch to
    ``fn``'s keyword arguments. Besides the loader's entries, the training loop puts ``epoch``
    (0-based) and ``epochs`` (the run's total) into every batch it trains on, for losses whose
    weights follow a schedule (StarFT); a loss that reads them fails clearly without them.
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

    def uses_base_model(self, cfg: Any) -> bool:
        """Whether this loss, under ``cfg``, reads outputs of the frozen initial model (the
        ``base_model`` of the family's ``forward``): ``base_logits`` (the KL guard) or any
        ``teacher_*`` output (StarFT's teacher)."""
        return any(n == "base_logits" or n.startswith(BASE_PREFIX) for n in self.outputs_for(cfg))

    def __call__(self, outputs: Outputs, batch: Batch, cfg: Any) -> dict[str, torch.Tensor]:
        """The loss and its named terms for one batch's model ``outputs``."""
        return self.fn(cfg=cfg, **self.inputs(outputs, batch))


#: what the relevance-alignment losses read: images, labels and masks; logits and relevance maps
MASKED = ("image", "label", "mask", "has_mask")
RELEVANCE = frozenset({"logits", "relevance"})

#: loss name -> :class:`LossSpec` (the factory) and the loss's config class
LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(
    name: str,
    config: type[LossConfig],
    batch_keys: tuple[str, ...] = ("image", "label"),
    needs: frozenset[str] = frozenset({"logits"}),
    inputs: Callable[[Outputs, Batch], dict[str, Any]] = classifier_inputs,
) -> Callable[[LossFn], LossFn]:
    """Decorator: register a loss function under ``name`` with its config class and what it
    reads (see :class:`LossSpec`)."""

    def wrap(fn: LossFn) -> LossFn:
        LOSSES.add(name, LossSpec(fn, batch_keys, needs, inputs), config)
        return fn

    return wrap


def get_loss(name: str) -> LossSpec:
    """The registered :class:`LossSpec` called ``name`` (error listing the registered losses)."""
    return LOSSES[name]


class LossConfig(StrictModel):
    """Base of every loss's config; ``LossConfig(name=..., **weights)`` builds the config class
    registered for ``name`` (default ``cft``)."""

    name: str

    def __new__(cls, *args: Any, **data: Any) -> Any:
        if cls is LossConfig:
            cls = LOSSES.entry(data.setdefault("name", "cft")).config
        return super().__new__(cls)

    def __init__(self, /, **data: Any) -> None:
        own = type(self).model_fields["name"].default  # a loss's own class defaults to its name
        data.setdefault("name", own if isinstance(own, str) else "cft")
        super().__init__(**data)

    @property
    def kl_weight(self) -> float:
        """Weight of the KL guard to the base model (0 for losses without one)."""
        return float(getattr(self, "lambda_kl", 0.0))


class AlignmentLossConfig(LossConfig):
    """Weights shared by the relevance-alignment losses: the total is lambda_align * L_align +
    lambda_cls * CE(logits / T, argmax) + lambda_kl * KL(base || model). ``mask_grid`` N > 0: an
    N x N cell of the mask counts as concept wherever any of its pixels does (set it to the model's
    patch size: a patch's relevance is one value, so a thin part would otherwise be penalised as
    background on most of its patch)."""

    lambda_align: float = Field(0.8, ge=0)
    lambda_cls: float = Field(0.2, ge=0)
    lambda_kl: float = Field(0.0, ge=0)
    temperature: float = Field(1.0, gt=0)
    mask_grid: int = Field(0, ge=0, description="0 = pixel masks")
