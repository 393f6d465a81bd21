"""The loss registry and the base of every loss's config.

A loss file defines its config class (``name: Literal["<its name>"]`` plus its own weights) and
registers both with ``LOSSES.register(name, config=..., needs_relevance=...)``; ``loss:`` in a
YAML config is validated against the config class its ``name`` picks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from unspur.config.base import StrictModel
from unspur.registry import Registry

__all__ = ["LOSSES", "AlignmentLossConfig", "LossConfig", "LossSpec", "get_loss", "register_loss"]

LossFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class LossSpec:
    """A registered objective: its function and whether it needs relevance maps."""

    fn: LossFn
    needs_relevance: bool


#: loss name -> :class:`LossSpec` (the factory) and the loss's config class
LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(name: str, config: type[LossConfig], needs_relevance: bool) -> Callable[[LossFn], LossFn]:
    """Decorator: register a loss function under ``name`` with its config class."""

    def wrap(fn: LossFn) -> LossFn:
        LOSSES.add(name, LossSpec(fn, needs_relevance), config)
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
        data.setdefault("name", "cft")
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
