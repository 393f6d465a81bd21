"""What ``unspur sweep`` writes after Tune: the trials table, the best config, the plot, MLflow.

MLflow: the sweep's parent run (the resolved sweep config as params, the space as an artifact) is
created through :mod:`unspur.tracking` and then addressed by id, so a resumed sweep keeps logging
into the same run; each trial's child run comes from Ray's ``MLflowLoggerCallback`` (as
:class:`~unspur.workflows.sweep.runs.TrialRunLogger`: reopened when the trial restarts).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from unspur import tracking
from unspur.config import FinetuneConfig, SweepConfig, dump_config, validate_config
from unspur.tune_spaces import SearchSpace, validate_point

__all__ = ["ParentRun", "best_trial", "export_best", "metric_plot", "trial_model", "trial_table"]

BEST_CONFIG = "best_finetune.yaml"


def trial_table(
    results: Any, space: SearchSpace, split: str, epochs: int, interrupted: bool = False
) -> pd.DataFrame:
    """One row per trial: ``trial_id``, each swept parameter, ``epochs`` trained, the metric at the
    trial's last report, ``status`` (complete | stopped (early, by the scheduler) | incomplete
    (interrupted) | failed) and ``error``."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trained = int(metrics.get("epochs_done", 0) or 0)
        if result.error is not None:
            status = "failed"
        elif trained >= epochs:
            status = "complete"
        else:
            status = "incomplete" if interrupted else "stopped"
        value = metrics.get(space.metric)
        rows.append(
            {
                "trial_id": Path(result.path).name.removeprefix("trial_"),
                **{key: (result.config or {}).get(key) for key in space.params},
                "epochs": trained,
                space.metric: float(value) if value is not None else math.nan,
                "status": status,
                "error": f"{type(result.error).__name__}: {result.error}"[:2000]
                if result.error is not None
                else "",
            }
        )
    columns = ["trial_id", *space.params, "epochs", space.metric, "status", "error"]
    return pd.DataFrame(rows, columns=columns).sort_values("trial_id", ignore_index=True)


def best_trial(table: pd.DataFrame, space: SearchSpace) -> dict[str, Any] | None:
    """The best trial by its last reported metric (the space's mode), as Tune ranks trials; on a tie
    the one trained longer. Failed trials are left out; None when no trial reported the metric.
    The row says ``epochs`` and ``status``: a scheduler may have stopped the best trial early."""
    scored = table[table[space.metric].notna() & (table["status"] != "failed")]
    if scored.empty:
        return None
    sign = 1.0 if space.mode == "max" else -1.0
    order = (scored[space.metric] * sign).to_numpy(), scored["epochs"].to_numpy()
    row = scored.iloc[max(range(len(scored)), key=lambda i: (order[0][i], order[1][i]))]
    return {
        "trial_id": str(row["trial_id"]),
        "params": {k: _plain(row[k]) for k in space.params},
        space.metric: float(row[space.metric]),
        "epochs": int(row["epochs"]),
        "status": str(row["status"]),
    }


def trial_model(trial_dir: Path) -> Path | None:
    """The model a trial leaves: ``model`` (it trained to the end), else ``selected`` (the best epoch
    so far under ``run.select`` best_*, also left by a trial the scheduler stopped), else its newest
    checkpoint (``run.select`` last); None if it saved nothing."""
    for name in ("model", "selected"):
        if (trial_dir / name / "config.yaml").is_file():
            return trial_dir / name
    saved = sorted(p.parent for p in trial_dir.glob("checkpoints/*/checkpoint_*/model.safetensors"))
    return saved[-1] if saved else None


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def export_best(finetune_cfg: FinetuneConfig, best: dict[str, Any], out: Path, init_from: str | None) -> Path:
    """``<out>/best_finetune.yaml``: the sweep's finetune config with the best point applied, training
    into ``<out>/best`` (``unspur finetune --config`` takes it as it is)."""
    cfg = validate_point(finetune_cfg, best["params"], f"best trial {best['trial_id']}")
    data = cfg.model_dump(mode="json")
    data.update({"out": str(out / "best"), "init_from": init_from or cfg.init_from})
    data["run"]["name"] = "best"
    return dump_config(validate_config(FinetuneConfig, data, "best config"), out / BEST_CONFIG)


def metric_plot(table: pd.DataFrame, space: SearchSpace) -> Any:
    """One panel per swept parameter (those with more than one value): each trial's metric (last
    report) against its value; complete trials filled, early-stopped / incomplete ones hollow, failed
    ones left out (counted in the title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    keys = [k for k in space.params if table[k].astype(str).nunique() > 1] or list(space.params)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    scored = table[table[space.metric].notna()]
    for ax, key in zip(axes[0], keys, strict=True):
        values = scored[key].tolist()
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = sorted({str(v) for v in values})
        xs = values if numeric else [labels.index(str(v)) for v in values]
        done = (scored["status"] == "complete").to_numpy()
        ys = scored[space.metric].to_numpy()
        ax.scatter([x for x, d in zip(xs, done, strict=True) if d], ys[done], color="C0", label="complete")
        ax.scatter(
            [x for x, d in zip(xs, done, strict=True) if not d],
            ys[~done],
            facecolors="none",
            edgecolors="C1",
            label="stopped early",
        )
        if not numeric:
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
        elif space.params[key].type == "loguniform":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel(space.metric, fontsize=8)
    failed = int((table["status"] == "failed").sum())
    fig.suptitle(f"{space.metric} per trial ({len(table)} trials, {failed} failed)", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


class ParentRun:
    """The sweep's MLflow parent run, addressed by id (reopened when a sweep resumes)."""

    def __init__(self, run_id: str, uri: str) -> None:
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=uri)
        self.client.update_run(run_id, status="RUNNING")

    @classmethod
    def create(cls, cfg: SweepConfig, space: SearchSpace, points: list[dict[str, Any]]) -> ParentRun:
        tags = {
            "job": "sweep",
            "method": space.method,
            "search": space.search,
            "scheduler": space.scheduler.name,
            "metric": space.metric,
        }
        with tracking.start_run(cfg.out, cfg.experiment, run_name=cfg.name, tags=tags) as run:
            tracking.log_config(cfg)
            tracking.log_dict(space.model_dump(mode="json"), "space.yaml")
            if space.search != "optuna":
                tracking.log_dict({"points": points}, "points.json")
            run_id = run.info.run_id
        return cls(run_id, tracking.tracking_uri(cfg.out))

    @classmethod
    def reopen(cls, out: str, run_id: str) -> ParentRun:
        return cls(run_id, tracking.tracking_uri(out))

    def _children(self, extra: str = "") -> list[Any]:
        experiment = self.client.get_run(self.run_id).info.experiment_id
        query = f"tags.`mlflow.parentRunId` = '{self.run_id}'" + (f" and {extra}" if extra else "")
        return self.client.search_runs([experiment], filter_string=query, max_results=10000)

    def end_stale_children(self) -> int:
        """Mark child runs left RUNNING by an interrupted sweep as KILLED; a trial that restarts
        reopens its run (:class:`~unspur.workflows.sweep.runs.TrialRunLogger`)."""
        stale = self._children("attributes.status = 'RUNNING'")
        for child in stale:
            self.client.set_terminated(child.info.run_id, "KILLED")
        return len(stale)

    def log_base(self, summary: dict[str, Any]) -> None:
        final = tracking.metric_items(summary.get("final") or {}, "base.")
        self.client.log_batch(self.run_id, metrics=_metrics(final))

    def finish(
        self, summary: dict[str, Any], table: pd.DataFrame, figure: Any, best_yaml: str | None
    ) -> None:
        """Log the outcome (best metric, counts, table, plot, best config), tag failed children, end."""
        counts = {
            "trials": summary["trials"],
            "failed": summary["failed"],
            "trial_epochs": summary["trial_epochs"],
        }
        best = summary.get("best")
        if best is not None:
            counts[f"best_{summary['metric']}"] = best[summary["metric"]]
            for key, value in best["params"].items():
                self.client.set_tag(self.run_id, f"best.{key}", str(value))
            self.client.set_tag(self.run_id, "best.trial_id", best["trial_id"])
        self.client.log_batch(self.run_id, metrics=_metrics(tracking.metric_items(counts)))
        self.client.log_text(self.run_id, table.to_csv(index=False), "trials.csv")
        if figure is not None:
            self.client.log_figure(self.run_id, figure, "figures/metric_vs_params.png")
        if best_yaml is not None:
            self.client.log_artifact(self.run_id, best_yaml)
        for row in table[table["status"] == "failed"].itertuples():
            for child in self._children(f"tags.trial_name = 'trial_{row.trial_id}'"):
                self.client.set_tag(child.info.run_id, "error", row.error[:5000])
        self.client.set_terminated(self.run_id, "KILLED" if summary["interrupted"] else "FINISHED")


def _metrics(items: dict[str, float]) -> list[Any]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, value, now, 0) for key, value in items.items()]
