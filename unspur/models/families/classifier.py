"""The ``timm`` family: image classifiers (``unspur.models.MODELS`` or any timm name).

Outputs: ``logits`` (B, K); ``relevance`` (B, H, W) in [0, 1], the relevance map of the model's
own prediction (``unspur.relevance``, differentiable through the attention maps; computed in
the same forward as the logits); ``base_logits`` (B, K), the frozen base model's logits (no
gradient; the KL guard). Evaluation: accuracy, per-group / worst-group accuracy and, with a
relevance method, how much of the relevance map lies on the batch's ``mask``. Works on a
DDP-wrapped model too: hooks go to the bare module, the forward through the wrapper.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from unspur.config import ModelConfig
from unspur.metrics import relevance_alignment, summarize
from unspur.models.families.protocol import Batch, Outputs, RelevanceFn, collect_predictions
from unspur.models.registry import build_model

__all__ = ["TimmClassifier", "relevance_fn"]


def relevance_fn(relevance: str | RelevanceFn) -> RelevanceFn:
    """A relevance method by name (``unspur.relevance.RELEVANCE``) or the callable itself."""
    if callable(relevance):
        return relevance
    from unspur.relevance import relevance_map

    return lambda model, images: relevance_map(model, images, method=relevance)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class TimmClassifier:
    """Image -> logits classifiers; see the module docstring for the outputs."""

    name = "timm"
    outputs = frozenset({"logits", "relevance", "base_logits"})

    def build(self, cfg: ModelConfig) -> nn.Module:
        """``unspur.models.build_model``: fused attention off, ``cfg.checkpoint`` loaded if set."""
        return build_model(cfg)

    def forward(
        self,
        model: nn.Module,
        batch: Batch,
        needs: frozenset[str],
        *,
        base_model: nn.Module | None = None,
        relevance: str | RelevanceFn = "rollout",
    ) -> Outputs:
        """``batch["image"]`` (B, 3, H, W) on the model's device -> the outputs in ``needs``."""
        images = batch["image"]
        out: Outputs = {}
        if "relevance" in needs:
            out["logits"], out["relevance"] = relevance_fn(relevance)(model, images)
        else:
            out["logits"] = model(images)
        if "base_logits" in needs:
            if base_model is None:
                raise ValueError("the base_logits output needs the frozen base model; pass base_model=")
            with torch.no_grad():
                out["base_logits"] = base_model(images)
        return out

    @torch.no_grad()
    def predict(self, model: nn.Module, loader: Iterable[Batch]) -> dict[str, np.ndarray]:
        """Arg-max predictions and softmax probabilities over ``loader`` (see ``ModelFamily``)."""
        model.eval()
        device = _device(model)
        return collect_predictions(loader, lambda images: model(images.to(device)))

    def relevance_maps(
        self, model: nn.Module, loader: Iterable[Batch], relevance: str | RelevanceFn = "rollout"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Relevance of the model's own predictions -> (phi (N, H, W) in [0, 1], masks (N, H, W) bool)."""
        model.eval()
        rel = relevance_fn(relevance)
        device = _device(model)
        phis, masks = [], []
        with torch.enable_grad():
            for batch in loader:
                _, phi = rel(model, batch["image"].to(device))
                phis.append(phi.detach().cpu().numpy())
                masks.append(batch["mask"].numpy() > 0.5)
        return np.concatenate(phis), np.concatenate(masks)

    def evaluate(
        self, model: nn.Module, loader: Iterable[Batch], relevance: str | RelevanceFn | None = None
    ) -> dict[str, Any]:
        """``summarize`` metrics plus, with ``relevance``, ``align_mass_in``, ``align_iou``,
        ``align_pointing`` (over images with a non-empty mask) and ``align_n``."""
        pred = self.predict(model, loader)
        out = summarize(pred["pred"], pred["label"], pred["group"])
        if relevance is not None:
            phi, masks = self.relevance_maps(model, loader, relevance)
            for key, value in relevance_alignment(phi, masks).items():
                out[f"align_{key}"] = value
        return out
