"""The trial side of ``unspur sweep``: what runs in a Tune trial's driver (and its Train workers).

A trial validates its point against the sweep's finetune config, then trains with the TorchTrainer
of :mod:`unspur.workflows.finetune.job` (a :class:`SweepReportCallback` forwards every epoch's report to Tune),
or in-process with ``finetune.run.num_workers: 0`` (:class:`TuneSession`). Tune sees each epoch's
validation metrics as ``<split>_<name>`` (``val_wga``) and ``epochs_done``.

A trial that Tune restarts after every epoch was already trained (the driver was killed after the trial
finished but before Tune's experiment snapshot recorded it) trains nothing and so reports nothing; it
then reports its last epoch's record from ``finetune_summary.json`` once, so the restored sweep still
knows the trial's metrics and epochs (:func:`report_if_silent`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune.integration.ray_train import TuneReportCallback

from unspur.config import FinetuneConfig, validate_config
from unspur.tune_spaces import validate_point
from unspur.workflows.finetune import job as finetune
from unspur.workflows.finetune.loop import run_loop
from unspur.workflows.finetune.sessions import LocalSession, flat_numbers

__all__ = [
    "SweepReportCallback",
    "TuneSession",
    "report_if_silent",
    "run_trial",
    "trial_config",
    "trial_metrics",
]


def trial_metrics(flat: Mapping[str, Any], split: str) -> dict[str, Any]:
    """Finetune's epoch report (``kept/wga``, ``eval/wga``, ``train/loss``, ``epoch`` 0-based) ->
    Tune's result (``<split>_wga``, ``<split>_epoch_wga``, ``train_loss``, ``epochs_done`` = epochs
    finished). ``<split>_<name>`` is the metric of the model the trial keeps (its best epoch so far
    under ``run.select`` best_*, else this epoch's): what Tune ranks and ASHA stops on, so a trial
    that peaked early and then collapsed is judged by the weights it leaves."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        head, _, rest = key.partition("/")
        if head == "kept" and rest:
            out[f"{split}_{rest}"] = value
        elif head == "eval" and rest:
            out[f"{split}_epoch_{rest}"] = value
        elif head == "train" and rest:
            out[f"train_{rest}"] = value
        else:
            out[key] = value
    out["epochs_done"] = int(flat["epoch"]) + 1
    return out


class SweepReportCallback(TuneReportCallback):
    """Forwards rank 0's epoch report of a trial's TorchTrainer to Tune, renamed by :func:`trial_metrics`."""

    def __init__(self, split: str) -> None:
        super().__init__()
        self.split = split

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        super().after_report(run_context, [trial_metrics(metrics[0], self.split)], checkpoint)


class TuneSession(LocalSession):
    """In-process trial (``num_workers`` 0): local checkpoints, every epoch reported to Tune."""

    def __init__(self, root: Path, keep: int, split: str) -> None:
        super().__init__(root, keep)
        self.split = split

    def report(self, metrics: dict[str, Any], write: Any, epoch: int) -> None:
        from ray import tune

        super().report(metrics, write, epoch)
        tune.report(trial_metrics(flat_numbers(metrics), self.split))


def report_if_silent(cfg: FinetuneConfig, split: str) -> bool:
    """When this run of a trial trained no epoch (``epochs_trained_this_run`` 0 in the summary it
    just wrote: every epoch was done before it started, so it reported nothing), report the last
    epoch's record of ``<out>/finetune_summary.json`` to Tune. Returns whether it did. (The summary,
    not a flag set by the report callback: on the Ray Train path that callback runs in Train's
    controller, not here.)"""
    from ray import tune

    path = Path(cfg.out) / "finetune_summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if summary.get("epochs_trained_this_run", 1) != 0:
        return False
    last = next((h for h in reversed(summary.get("history") or []) if int(h.get("epoch", -1)) >= 0), None)
    if last is None:
        return False
    tune.report(trial_metrics(flat_numbers(last), split))
    return True


def trial_config(setup: Mapping[str, Any], point: Mapping[str, Any], trial_id: str) -> FinetuneConfig:
    """The trial's FinetuneConfig: the point applied, out/checkpoints in the trial's folder, the
    sweep's rendered tables as data, tracking off (the sweep logs the trial as a child run)."""
    base = FinetuneConfig.model_validate(setup["finetune"])
    cfg = validate_point(base, dict(point), f"trial {trial_id}")
    folder = (Path(setup["trials"]) / trial_id).resolve()  # an adopted orphan's folder (orphans.py)
    data = {
        **cfg.data.model_dump(mode="json"),
        "images": setup["tables"]["images"],
        "masks": setup["tables"]["masks"],
        "spuriousworld": None,
    }
    run = {
        **cfg.run.model_dump(mode="json"),
        "name": "finetune",
        "storage_path": str(folder / "checkpoints"),
        "track": False,
    }
    updated = {
        **cfg.model_dump(mode="json"),
        "out": str(folder),
        "data": data,
        "run": run,
        "init_from": setup["init_from"] or cfg.init_from,
    }
    return validate_config(FinetuneConfig, updated, f"trial {trial_id}")


def run_trial(point: dict[str, Any], setup: dict[str, Any]) -> None:
    """Tune driver of one trial: Ray Train workers (``num_workers`` >= 1) or in-process training."""
    from ray import tune

    cfg = trial_config(setup, point, tune.get_context().get_trial_id())
    if cfg.run.num_workers == 0:
        session = TuneSession(
            Path(cfg.run.storage_path) / cfg.run.name, cfg.run.keep_checkpoints, setup["split"]
        )
        run_loop(cfg, setup["tables"], session)
        report_if_silent(cfg, setup["split"])
        return
    result = finetune.build(cfg, callbacks=[SweepReportCallback(setup["split"])]).fit()
    if result.error is not None:
        raise result.error
    report_if_silent(cfg, setup["split"])
