"""A grid of concept-mask overlays for the mask stage's MLflow run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["blend", "overlay_grid"]

_COLORS = np.array(
    [
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [170, 110, 40],
    ],
    dtype=np.float64,
)


def blend(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.5) -> np.ndarray:
    """Paint each (H, W) mask onto ``image`` ((H, W, 3) uint8) in its own colour -> (H, W, 3) uint8."""
    out = image.astype(np.float64)
    for i, mask in enumerate(masks):
        color = _COLORS[i % len(_COLORS)]
        out[mask] = (1 - alpha) * out[mask] + alpha * color
    return np.clip(out, 0, 255).astype(np.uint8)


def overlay_grid(
    samples: Sequence[tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]], cols: int = 4
) -> Any:
    """Figure of ``(title, image, [(concept, mask), ...])`` panels, concepts listed in their colours."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = max(len(samples), 1)
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, image, concept_masks) in zip(axes.ravel(), samples, strict=False):
        ax.imshow(blend(image, [m for _, m in concept_masks]), interpolation="nearest")
        ax.set_title(title, fontsize=8)
        for i, (concept, _) in enumerate(concept_masks[:6]):
            ax.text(
                0.01,
                0.99 - 0.08 * i,
                concept,
                transform=ax.transAxes,
                fontsize=7,
                va="top",
                color=_COLORS[i % len(_COLORS)] / 255,
                backgroundcolor=(0, 0, 0, 0.5),
            )
    fig.tight_layout()
    return fig
