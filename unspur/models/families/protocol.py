"""The contract every model family meets: how a model is built, run on a batch and evaluated.

A batch is a dict (``image`` (B, 3, H, W) float, ``label`` (B,) int, ``mask`` (B, H, W), caption
tokens, regions...: whatever the loss declares in ``LossSpec.batch_keys``) plus the metadata
lists ``image_id`` and ``group``. ``forward`` returns a dict of named outputs (tensors); a loss
names the outputs it reads in ``LossSpec.needs`` and the family computes only those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from unspur.config.model import ClipModelConfig, ModelConfig

__all__ = ["Batch", "ModelFamily", "Outputs", "RelevanceFn", "collect_predictions"]

Batch = dict[str, Any]
Outputs = dict[str, torch.Tensor]
RelevanceFn = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@runtime_checkable
class ModelFamily(Protocol):
    """A registered model family (``unspur.models.families.FAMILIES``).

    ``name``: its registry key (the config's ``model.family``). ``outputs``: every output name
    ``forward`` can produce; a loss needing another one is refused before training starts.
    """

    name: str
    outputs: frozenset[str]

    def build(self, cfg: ModelConfig | ClipModelConfig) -> nn.Module:
        """The model ``cfg`` (the family's config class, ``MODEL_FAMILIES``) describes (weights
        from ``cfg.checkpoint`` when set)."""
        ...

    def forward(
        self,
        model: nn.Module,
        batch: Batch,
        needs: frozenset[str],
        *,
        base_model: nn.Module | None = None,
        relevance: str | RelevanceFn = "rollout",
    ) -> Outputs:
        """The outputs named in ``needs`` (a subset of ``outputs``) for one batch on the model's
        device; ``base_model`` is the frozen model behind outputs such as ``base_logits``."""
        ...

    def predict(self, model: nn.Module, loader: Iterable[Batch]) -> dict[str, np.ndarray]:
        """``image_id`` (N,) str, ``label`` (N,) int, ``group`` (N,) str, ``pred`` (N,) int and
        ``probs`` (N, K) float32 over ``loader``, in its order."""
        ...

    def evaluate(
        self, model: nn.Module, loader: Iterable[Batch], relevance: str | RelevanceFn | None = None
    ) -> dict[str, Any]:
        """``{"acc", "wga", "worst_group", "per_group", "n"}`` (``unspur.metrics.summarize``) plus,
        with a ``relevance`` method, ``align_*`` keys where the family supports it."""
        ...


def collect_predictions(
    loader: Iterable[Batch], logits_of: Callable[[torch.Tensor], torch.Tensor], n_classes: int = 0
) -> dict[str, np.ndarray]:
    """``predict``'s arrays over ``loader``: ``image_id``, ``label``, ``group``, ``pred`` (arg-max)
    and ``probs`` (softmax) of ``logits_of(batch["image"])`` ((B, C) logits); ``n_classes`` sizes
    ``probs`` of an empty loader."""
    ids: list[str] = []
    groups: list[str] = []
    labels, preds, probs = [], [], []
    for batch in loader:
        logits = logits_of(batch["image"])
        preds.append(logits.argmax(1).cpu().numpy())
        probs.append(logits.float().softmax(1).cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        ids.extend(str(i) for i in batch["image_id"])
        groups.extend(str(g) for g in batch["group"])
    cat = np.concatenate
    return {
        "image_id": np.asarray(ids, dtype=str),
        "label": cat(labels) if labels else np.zeros(0, int),
        "group": np.asarray(groups, dtype=str),
        "pred": cat(preds) if preds else np.zeros(0, int),
        "probs": cat(probs) if probs else np.zeros((0, n_classes), np.float32),
    }
