"""``unspur evaluate``: accuracy, per-group / worst-group accuracy and relevance alignment.

The dataset comes through an adapter (``unspur.data.adapters``: a Parquet image table, an image
folder with masks, Waterbirds); inference runs on Ray Data with a pool of
:class:`unspur.actors.classifier.ClassifierPredictor` actors (model loaded once per actor, fractional
CPUs); metrics come from ``unspur.metrics``. Writes ``out/metrics.json`` and
``out/predictions.parquet``, prints a table per group and logs to MLflow.

Example: ``unspur evaluate --out DIR checkpoint=CKPT images=SYNTH_DIR split=test``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray

from unspur.actors.classifier import ClassifierPredictor
from unspur.config import EvaluateConfig
from unspur.data.adapters import LoadedDataset, load_dataset
from unspur.metrics import summarize
from unspur.workflows.job import init_ray, main_for

__all__ = [
    "outputs",
    "CONFIG",
    "attach_masks",
    "build",
    "load_inputs",
    "main",
    "metrics_from_predictions",
    "run",
]

CONFIG = EvaluateConfig
ALIGN_KEYS = ("mass_in", "iou", "pointing")


def load_inputs(cfg: EvaluateConfig) -> LoadedDataset:
    """The evaluation set through the configured adapter (validated: columns, labels, split)."""
    return load_dataset(cfg.adapter, cfg.images, masks=cfg.masks, classes=cfg.classes, split=cfg.split)


def attach_masks(images: pd.DataFrame, masks: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``mask_rles`` (JSON list of an image's usable RLEs; ``""`` for none) to the image rows."""
    if masks is None:
        return images
    usable = masks if "status" not in masks.columns else masks[masks["status"] == "ok"]
    by_id = usable.groupby("image_id")["rle"].apply(lambda rles: json.dumps([_plain(r) for r in rles]))
    return images.assign(mask_rles=images["image_id"].map(by_id).fillna(""))


def _plain(rle: Any) -> dict[str, Any]:
    """An RLE read back from Parquet (numpy arrays inside) -> JSON-ready dict."""
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"]}


def build(cfg: EvaluateConfig, data: LoadedDataset | None = None) -> ray.data.Dataset:
    """The unexecuted inference Dataset (needs a running Ray to hold the input rows)."""
    if not ray.is_initialized():
        raise RuntimeError(
            "unspur.workflows.evaluate.job.build needs a running Ray: call unspur.workflows.job.init_ray() first"
        )
    data = data if data is not None else load_inputs(cfg)
    use_masks = cfg.relevance is not None and data.masks is not None
    rows = attach_masks(data.images, data.masks if use_masks else None)
    keep = [c for c in ("image_id", "image", "path", "label", "group", "mask_rles") if c in rows.columns]
    return ray.data.from_pandas(rows[keep]).map_batches(
        ClassifierPredictor,
        fn_constructor_kwargs={
            "checkpoint": cfg.checkpoint,
            "relevance": cfg.relevance if use_masks else None,
        },
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus,
        batch_size=cfg.batch_size,
        batch_format="numpy",
    )


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def metrics_from_predictions(pred: pd.DataFrame) -> dict[str, Any]:
    """Prediction rows -> ``summarize`` metrics + relevance alignment (overall and per group).

    Error rows (``error`` not empty) are counted in ``n_errors`` and left out of every metric.
    """
    ok = pred[pred["error"] == ""]
    out = summarize(ok["pred"].to_numpy(), ok["label"].to_numpy(), ok["group"].to_numpy())
    out["n_errors"] = int(len(pred) - len(ok))
    out["group_sizes"] = {str(g): int(n) for g, n in ok["group"].value_counts().sort_index().items()}
    with_mask = ok[ok["has_mask"]]
    if len(with_mask) and with_mask["align_mass_in"].notna().any():
        for key in ALIGN_KEYS:
            out[f"align_{key}"] = _mean(with_mask[f"align_{key}"])
        out["align_n"] = int(with_mask["align_mass_in"].notna().sum())
        out["per_group_align_mass_in"] = {
            str(g): _mean(rows["align_mass_in"]) for g, rows in with_mask.groupby("group", sort=True)
        }
    return out


def _print_table(result: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("group", "n", "accuracy", "relevance mass in mask"):
        table.add_column(name, justify="left" if name == "group" else "right")
    align = result.get("per_group_align_mass_in", {})
    for group, acc in result["per_group"].items():
        mark = " (worst)" if group == result["worst_group"] else ""
        table.add_row(
            group + mark,
            str(result["group_sizes"][group]),
            f"{acc:.3f}",
            f"{align[group]:.3f}" if group in align else "-",
        )
    table.add_row(
        "all",
        str(result["n"]),
        f"{result['acc']:.3f}",
        f"{result['align_mass_in']:.3f}" if "align_mass_in" in result else "-",
        style="bold",
    )
    console = Console()
    console.print(table)
    console.print(f"worst-group accuracy {result['wga']:.3f}; error rows {result['n_errors']}")


def _track(cfg: EvaluateConfig, result: dict[str, Any]) -> None:
    from unspur import tracking

    with tracking.start_run(cfg.out, cfg.experiment, run_name=f"evaluate-{cfg.split or 'all'}"):
        tracking.log_config(cfg)
        tracking.log_metrics({k: v for k, v in result.items() if k != "group_sizes"})
        tracking.log_dict(result, "metrics.json")


def run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Check the checkpoint and the dataset, then (joining or starting Ray) infer on Ray Data,
    compute and write the metrics; returns them."""
    from unspur.models import checkpoint_model_config

    checkpoint_model_config(cfg.checkpoint)  # a missing / foreign checkpoint fails here, before Ray
    data = load_inputs(cfg)
    init_ray()
    pred = build(cfg, data).to_pandas().sort_values("image_id", kind="stable").reset_index(drop=True)
    if len(pred) != len(data.images):  # rows in == rows out (+ error rows, counted inside)
        raise RuntimeError(f"inference returned {len(pred)} rows for {len(data.images)} images")
    result = metrics_from_predictions(pred)
    result["classes"] = data.classes
    if cfg.relevance is not None and data.masks is None:
        result["note"] = "no masks given: relevance alignment skipped (set masks=... or use a synth folder)"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    pred.to_parquet(out / "predictions.parquet", index=False)
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=_json_default))
    _print_table(
        result, f"evaluate {Path(cfg.checkpoint).name} on {cfg.images} ({cfg.split or 'all splits'})"
    )
    if cfg.track:
        _track(cfg, result)
    return result


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def main(argv: list[str] | None = None) -> int:
    """Run the job; a dataset or checkpoint the user got wrong is a one-line error (exit code 2),
    printed before Ray starts."""
    return main_for("evaluate", EvaluateConfig, run, argv, needs_ray=False)


def outputs(cfg: EvaluateConfig) -> dict[str, Any]:
    """What a pipeline stage of this job offers later stages: ``metrics`` (metrics.json)."""
    return {"metrics": str(Path(cfg.out).resolve() / "metrics.json")}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
