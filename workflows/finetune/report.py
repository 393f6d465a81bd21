"""MLflow logging (rank 0) and the before/after relevance figure of ``unspur finetune``.

The run is created through :mod:`unspur.tracking` (params = the flattened config); epochs are
logged with an ``MlflowClient`` bound to the run id, so a resumed job (a rerun, or a restarted
Ray Train worker group) keeps logging into the same MLflow run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unspur import tracking
from unspur.config import FinetuneConfig
from unspur.relevance import relevance_map

__all__ = ["Tracker", "relevance_figure"]


class Tracker:
    """One MLflow run of a fine-tuning job, addressed by id (safe to reopen after a restart)."""

    def __init__(self, run_id: str, uri: str) -> None:
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)

    @classmethod
    def open(cls, cfg: FinetuneConfig, run_id: str | None) -> Tracker:
        """Create the run (logging the config) or reopen ``run_id`` after a resume."""
        if run_id is None:
            tags = {"job": "finetune", "loss": cfg.loss.name, "model": cfg.model.name}
            with tracking.start_run(cfg.out, cfg.run.experiment, run_name=cfg.run.name, tags=tags) as run:
                tracking.log_config(cfg)
                run_id = run.info.run_id
        tracker = cls(run_id, tracking.tracking_uri(cfg.out))
        tracker.client.update_run(run_id, status="RUNNING")
        return tracker

    def log_epoch(self, record: dict[str, Any], step: int) -> None:
        """Every loss term (``train.*``), the learning rate and the evaluation metrics (``eval.*``)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = tracking.metric_items({k: v for k, v in record.items() if k != "epoch"})
        metrics = [Metric(key, value, now, step) for key, value in items.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def finish(self, model_dir: Path, summary: dict[str, Any]) -> None:
        """Log the final model folder (safetensors + config) and the summary, tag the run with which
        weights were kept (``selection``: e.g. that no epoch beat the starting model); end the run."""
        self.client.log_artifacts(self.run_id, str(model_dir), "model")
        if summary.get("selection"):
            self.client.set_tag(self.run_id, "selection", summary["selection"])
            self.client.log_metric(self.run_id, "selected_epoch", summary["selected_epoch"])
        self.client.log_dict(
            self.run_id, {k: v for k, v in summary.items() if k != "history"}, "finetune_summary.json"
        )
        self.client.set_terminated(self.run_id, "FINISHED")


def _denormalize(image: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> np.ndarray:
    return (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def relevance_figure(before: nn.Module, after: nn.Module, dataset: Any, n_images: int, method: str) -> Any:
    """A grid: one row per image (the first ``n_images`` with a mask) -> image, mask, relevance of
    ``before``, relevance of ``after`` (each titled with the model's prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items: list[dict[str, Any]] = []
    spread = np.unique(np.linspace(0, len(dataset) - 1, num=min(len(dataset), 4 * n_images)).astype(int))
    for i in spread:  # spread over the table (it is often sorted by class or group)
        item = dataset[int(i)]
        if item["has_mask"]:
            items.append(item)
        if len(items) == n_images:
            break
    items = items or [dataset[int(i)] for i in spread[:n_images]]
    images = torch.stack([it["image"] for it in items])
    columns = [("image", None), ("mask", None), ("before", before), ("after", after)]
    maps = {}
    for name, model in columns[2:]:
        model.eval()
        logits, phi = relevance_map(model, images, method=method)
        maps[name] = (phi.detach().numpy(), logits.detach().argmax(1).numpy())
    fig, axes = plt.subplots(len(items), 4, figsize=(8, 2 * len(items)), squeeze=False)
    for row, item in enumerate(items):
        rgb = _denormalize(item["image"], dataset.mean, dataset.std)
        axes[row, 0].imshow(rgb)
        axes[row, 0].set_title(f"label {item['label']}", fontsize=8)
        axes[row, 1].imshow(item["mask"].numpy(), cmap="gray", vmin=0, vmax=1)
        for col, name in ((2, "before"), (3, "after")):
            phi, pred = maps[name][0][row], maps[name][1][row]
            axes[row, col].imshow(rgb)
            axes[row, col].imshow(phi, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            axes[row, col].set_title(f"{name}: pred {pred}", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    return fig
