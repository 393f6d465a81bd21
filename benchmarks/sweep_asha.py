"""Trial-epochs ASHA needs to match a full grid sweep's best validation worst-group accuracy.

Sweeps of ``unspur.workflows.sweep.job`` over one CFT grid (``loss.lambda_align`` x ``train.lr``) on a small
SpuriousWorld, all from the same ERM base model (trained once by the first sweep), with the CFT
recipe (only the attention's query/key projections train; ``train.lr`` around its 1e-3, the range
of ``tune_spaces/cft.yaml``) and ``run.select: best_wga``: each trial keeps its best validation
epoch and reports that model's val WGA to Tune (best so far), so ASHA ranks and stops trials by the
weights they leave, and a stopped trial still leaves them. FIFO (every grid point trained for all
epochs), then ASHA (grace 1, reduction factor 2, on epochs) once per grid order (``--orders``: as
given, reversed, rotated by half; ASHA's decisions depend on the order in which trials arrive).
``--variant``: ``promotion`` (default: ASHA as published, the shipped spaces' variant; a trial waits
at each rung and the top half of a rung go on, ties broken by val accuracy) or ``stopping`` (Ray's
``ASHAScheduler``). A rerun with the same ``--out`` reuses the finished grid (the sweep job
restores it; delete ``asha_*`` to rerun those).
Under ASHA the sweep job starts a grid's points in an order shuffled by its seed (the space's
``order`` unset; ``--order given`` runs them as listed): each of the three listed orders then starts
in a different shuffled order, recorded per sweep (``start``).
Trials run in-process (``finetune.run.num_workers: 0``), two at a time. From the trials' MLflow
child runs (one time-stamped ``val_wga`` record per epoch) each ASHA sweep's epoch reports are put
in time order; ASHA "reaches" the grid when a trial reports a kept model within ``--tolerance`` (1
point) of the grid's best (that model is on disk from that report on). Per order: ``reach`` =
trial-epochs ASHA had spent by then / the grid's trial-epochs (``inf`` if never), ``total`` = all of
ASHA's trial-epochs / the grid's. Last line: ``ratio=<largest reach over the orders>``.
Target: <= 0.4 (on every order).

    python benchmarks/sweep_asha.py --out runs/bench_sweep_asha
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from unspur.config import SweepConfig, validate_config
from unspur.workflows.sweep import job as sweep

os.environ.setdefault("TIMM_FUSED_ATTN", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

WORLD = {"image_size": 32, "rho": 0.85, "n_train": 800, "n_val": 640, "n_test": 16, "seed": 0}
MODEL = {"name": "hybrid_tiny_synth", "num_classes": 4, "img_size": 32}


def _finetune(epochs: int) -> dict[str, Any]:
    return {
        "data": {"spuriousworld": WORLD, "eval_split": "val"},
        "model": MODEL,
        "loss": {"name": "cft"},
        "fewshot": {"enabled": True, "per_class": 8, "class_fraction": 0.5, "seed": 0},
        "train": {
            "epochs": epochs,
            "batch_size": 8,
            "lr": 1e-3,
            "weight_decay": 1e-4,
            "warmup_epochs": 0,
            "freeze_norm": True,
            "params": "qk",
            "num_threads": 1,
        },
        "run": {"num_workers": 0, "cpus_per_worker": 1, "figure_images": 0, "select": "best_wga"},
    }


BASE = {
    "data": {"spuriousworld": WORLD, "eval_split": "val"},
    "model": MODEL,
    "loss": {"name": "erm"},
    "train": {
        "epochs": 6,
        "batch_size": 32,
        "lr": 1e-3,
        "warmup_epochs": 1,
        "schedule": "cosine",
        "num_threads": 2,
    },
    "run": {"name": "base", "num_workers": 0, "figure_images": 0},
}


def _space(
    path: Path,
    scheduler: str,
    aligns: list[float],
    lrs: list[float],
    order: str | None = None,
    variant: str = "promotion",
) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "method": "cft",
                "search": "grid",
                "order": order,
                "metric": "val_wga",
                "mode": "max",
                "scheduler": {
                    "name": scheduler,
                    "grace_period": 1,
                    "reduction_factor": 2,
                    **({"variant": variant} if scheduler == "asha" else {}),
                },
                "params": {
                    "loss.lambda_align": {"type": "grid", "values": aligns},
                    "train.lr": {"type": "grid", "values": lrs},
                },
            },
            sort_keys=False,
        )
    )
    return path


def _reports(out: Path, parent_run_id: str) -> list[tuple[int, str, int, float]]:
    """Every trial epoch report of a sweep: (MLflow timestamp ms, trial run id, epochs done, val_wga)."""
    from mlflow import MlflowClient

    client = MlflowClient(
        tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{out / 'mlflow.db'}"
    )
    experiment = client.get_experiment_by_name("sweep")
    children = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )
    rows = []
    for child in children:
        done = {m.step: int(m.value) for m in client.get_metric_history(child.info.run_id, "epochs_done")}
        for m in client.get_metric_history(child.info.run_id, "val_wga"):
            rows.append((m.timestamp, child.info.run_id, done[m.step], m.value))
    return sorted(rows)


def _reach(out: Path, summary: dict, best: float, tolerance: float) -> int | None:
    """Trial-epochs spent when a trial first reported a kept model within ``tolerance`` of ``best``
    (None: never)."""
    for spent, (_, _, _, value) in enumerate(_reports(out, summary["parent_run_id"]), start=1):
        if value >= best - tolerance:
            return spent
    return None


def _orders(values: list[float], count: int) -> list[list[float]]:
    half = len(values) // 2
    return [values, values[::-1], values[half:] + values[:half]][:count]


def _sweep(
    out: Path, space: Path, epochs: int, base: dict | None, init_from: str | None, seed: int = 0
) -> tuple[dict, float]:
    finetune = {**_finetune(epochs), "init_from": init_from}
    cfg = validate_config(
        SweepConfig,
        {
            "out": str(out),
            "space": str(space),
            "finetune": finetune,
            "base": base,
            "max_concurrent_trials": 2,
            "name": "bench",
            "seed": seed,
        },
        "benchmark",
    )
    start = time.perf_counter()
    summary = sweep.run(cfg)
    summary["start_order"] = sweep.prepare(cfg).points
    return summary, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_sweep_asha"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--seed", type=int, default=0, help="the ASHA sweeps' seed (their shuffled start order)"
    )
    parser.add_argument("--aligns", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 6e-4, 1.5e-3, 3e-3])
    parser.add_argument("--orders", type=int, default=3, choices=[1, 2, 3])
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument(
        "--order",
        choices=("shuffled", "given"),
        default=None,
        help="ASHA's grid start order (default: the job's)",
    )
    parser.add_argument(
        "--variant",
        choices=("promotion", "stopping"),
        default="promotion",
        help="ASHA as published (trials wait at rungs) or Ray's stopping variant",
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    grid_out = args.out / "grid"
    grid, grid_s = _sweep(
        grid_out, _space(args.out / "grid.yaml", "fifo", args.aligns, args.lrs), args.epochs, BASE, None
    )
    best, grid_epochs = grid["best"]["val_wga"], grid["trial_epochs"]
    report: dict[str, Any] = {
        "base_val_wga": _base_wga(grid_out),
        "grid": {
            "trials": grid["trials"],
            "trial_epochs": grid_epochs,
            "best_val_wga": best,
            "best_params": grid["best"]["params"],
            "seconds": round(grid_s, 1),
            "val_wga": _table(grid_out),
        },
        "asha": [],
    }
    reaches = []
    for k, (aligns, lrs) in enumerate(
        zip(_orders(args.aligns, args.orders), _orders(args.lrs, args.orders), strict=True)
    ):
        out = args.out / f"asha_{k}"
        asha, seconds = _sweep(
            out,
            _space(args.out / f"asha_{k}.yaml", "asha", aligns, lrs, args.order, args.variant),
            args.epochs,
            None,
            grid["base_model"],
            args.seed,
        )
        reached = _reach(out, asha, best, args.tolerance)
        reaches.append(reached / grid_epochs if reached is not None else math.inf)
        report["asha"].append(
            {
                "listed_first": {"loss.lambda_align": aligns[0], "train.lr": lrs[0]},
                "start": [[p["loss.lambda_align"], p["train.lr"]] for p in asha["start_order"]],
                "trial_epochs": asha["trial_epochs"],
                "best_val_wga": asha["best"]["val_wga"],
                "best_status": asha["best"]["status"],
                "best_model_saved": bool(asha.get("best_model")),
                "stopped": _stopped(out),
                "trial_epochs_to_reach": reached,
                "reach": round(reaches[-1], 3),
                "total": round(asha["trial_epochs"] / grid_epochs, 3),
                "seconds": round(seconds, 1),
            }
        )
    print(json.dumps(report, indent=2))
    print(f"ratio={max(reaches):.3f}")


def _table(out: Path) -> list[list[Any]]:
    """[lambda_align, lr, kept (best-epoch) val_wga] per grid trial."""
    import pandas as pd

    table = pd.read_csv(out / "trials.csv")
    return table[["loss.lambda_align", "train.lr", "val_wga"]].values.tolist()


def _stopped(out: Path) -> int:
    """Trials the scheduler stopped early in one sweep."""
    import pandas as pd

    return int((pd.read_csv(out / "trials.csv")["status"] == "stopped").sum())


def _base_wga(grid_out: Path) -> float | None:
    summary = grid_out / "base" / "finetune_summary.json"
    return json.loads(summary.read_text())["final"]["wga"] if summary.is_file() else None


if __name__ == "__main__":
    main()
