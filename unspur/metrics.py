"""Evaluation metrics: accuracy, per-group / worst-group accuracy, relevance alignment, precision@k.

Inputs are array-likes: ``preds``/``labels`` ``(N,)`` ints, ``groups`` ``(N,)`` hashables
(e.g. "bird/water"); relevance maps ``phi`` ``(N, H, W)`` in [0, 1] and masks ``(N, H, W)`` bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "group_accuracies",
    "worst_group_accuracy",
    "summarize",
    "relevance_alignment",
    "precision_at_k",
]


def _check_lengths(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs differ in length: {lengths}")


def accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Fraction of ``preds == labels``; NaN for empty input."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    _check_lengths(preds=preds, labels=labels)
    return float(np.mean(preds == labels)) if len(preds) else float("nan")


def group_accuracies(preds, labels, groups) -> dict[str, float]:
    """Accuracy per group, keyed by ``str(group)``, in sorted group order."""
    preds, labels, groups = np.asarray(preds), np.asarray(labels), np.asarray(groups)
    _check_lengths(preds=preds, labels=labels, groups=groups)
    out: dict[str, float] = {}
    for g in sorted(set(groups.tolist()), key=str):
        sel = groups == g
        out[str(g)] = float(np.mean(preds[sel] == labels[sel]))
    return out


def worst_group_accuracy(preds, labels, groups) -> float:
    """Minimum per-group accuracy; NaN for empty input."""
    per_group = group_accuracies(preds, labels, groups)
    return min(per_group.values()) if per_group else float("nan")


def summarize(preds, labels, groups) -> dict[str, Any]:
    """``{"acc", "wga", "worst_group", "per_group", "n"}`` for one evaluation set."""
    per_group = group_accuracies(preds, labels, groups)
    worst = min(per_group, key=per_group.get) if per_group else None
    return {
        "acc": accuracy(preds, labels),
        "wga": per_group[worst] if worst is not None else float("nan"),
        "worst_group": worst,
        "per_group": per_group,
        "n": len(np.asarray(preds)),
    }


def relevance_alignment(phi: np.ndarray, masks: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """How much of the relevance map lies on the mask, averaged over images with a non-empty mask.

    - ``mass_in``: sum(phi * mask) / sum(phi) (relevance mass inside the mask)
    - ``iou``: IoU of ``phi >= threshold`` with the mask
    - ``pointing``: 1 if the arg-max pixel of phi lies in the mask (pointing game)
    ``n`` counts the images used.
    """
    phi = np.asarray(phi, dtype=np.float64)
    masks = np.asarray(masks).astype(bool)
    if phi.shape != masks.shape or phi.ndim != 3:
        raise ValueError(f"phi and masks must both be (N, H, W); got {phi.shape} and {masks.shape}")
    keep = masks.reshape(len(masks), -1).any(axis=1)
    if not keep.any():
        return {"mass_in": float("nan"), "iou": float("nan"), "pointing": float("nan"), "n": 0}
    phi, masks = phi[keep], masks[keep]
    flat_phi = phi.reshape(len(phi), -1)
    flat_mask = masks.reshape(len(masks), -1)
    total = flat_phi.sum(axis=1)
    mass_in = np.where(total > 0, (flat_phi * flat_mask).sum(axis=1) / np.maximum(total, 1e-12), 0.0)
    hot = flat_phi >= threshold
    inter = (hot & flat_mask).sum(axis=1)
    uni = (hot | flat_mask).sum(axis=1)
    ious = inter / np.maximum(uni, 1)
    pointing = flat_mask[np.arange(len(flat_phi)), flat_phi.argmax(axis=1)]
    return {
        "mass_in": float(mass_in.mean()),
        "iou": float(ious.mean()),
        "pointing": float(pointing.mean()),
        "n": int(keep.sum()),
    }


def precision_at_k(relevant: Sequence[bool] | np.ndarray, k: int) -> float:
    """Fraction of the first ``k`` ranked items that are relevant (fewer than k items: of those)."""
    if k <= 0:
        raise ValueError(f"precision_at_k needs k >= 1, got {k}")
    top = np.asarray(relevant, dtype=bool)[:k]
    return float(top.mean()) if len(top) else float("nan")
