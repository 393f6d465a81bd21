"""``unspur sweep``: loss-weight sweeps with Ray Tune over the Ray Train job of ``unspur finetune``.

The Ray 2.60 pattern: the Tuner runs a driver function per trial
(:func:`unspur.workflows.sweep.trial.run_trial`) that validates its point of the search space against
the training config (``unspur.tune_spaces.validate_point``) and builds the TorchTrainer of
:mod:`unspur.workflows.finetune.job` with a ``TuneReportCallback``; the trial's driver holds no CPU (its
workers do), so ``max_concurrent_trials`` is what the cluster's CPUs / GPUs fit. With
``finetune.run.num_workers: 0`` the driver trains in-process and holds the CPUs itself. Trials
report the VALIDATION metrics of the model they keep after every epoch (``val_wga``, ``val_acc``,
... named after ``finetune.data.eval_split``: with ``finetune.run.select`` best_* the best epoch so
far, so ASHA judges a trial by the weights it leaves), the epoch's own (``val_epoch_wga``, ...) and
``epochs_done``, ASHA's time axis. A trial ASHA stops still leaves that model (``trials/<id>/
selected``); the best trial's model is copied to ``best_model``. Before any Ray work the
config, the space and every point that will run (the grid, or the pre-drawn random samples; for
Optuna the range ends and choices) are validated. Outputs under ``out``: ``trials/<trial id>/``
(each trial's model and checkpoints), ``tune/<name>/`` (Tune state: rerun the same command to
resume), ``trials.csv``, ``best_finetune.yaml`` (the best trial's config, for ``unspur finetune
--config``), ``metric_vs_params.png``, ``sweep_summary.json``, and MLflow: one parent run, one
child run per trial, also when the sweep resumes (a restarted trial reopens its run; failed trials
show as FAILED, with an ``error`` tag).

    unspur sweep --config workflows/configs/sweep_synth.yaml --space tune_spaces/cft.yaml \
        --samples 4 --out runs/sweep
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unspur import tracking
from unspur.config import ConfigError, FinetuneConfig, SweepConfig
from unspur.digest import config_digest
from unspur.models.resume import TRAIN_STATE
from unspur.tune_spaces import SearchSpace, grid_points, load_space, sample_point, validate_point
from unspur.workflows.finetune import job as finetune
from unspur.workflows.job import init_ray, main_for
from unspur.workflows.sweep.flags import FLAGS
from unspur.workflows.sweep.report import (
    BEST_CONFIG,
    ParentRun,
    best_trial,
    export_best,
    metric_plot,
    trial_model,
    trial_table,
)
from unspur.workflows.sweep.resources import concurrency, trial_resources
from unspur.workflows.sweep.search import param_space, schedule
from unspur.workflows.sweep.trial import run_trial

__all__ = [
    "outputs",
    "CONFIG",
    "Plan",
    "build",
    "concurrency",
    "main",
    "prepare",
    "run",
    "trial_resources",
]

CONFIG = SweepConfig
STATE = "unspur_sweep.json"  # in the Tune experiment folder: the parent run and the config digest


@dataclass(frozen=True)
class Plan:
    """A validated sweep: resolved config, space, the points that will run, and where things go."""

    cfg: SweepConfig
    space: SearchSpace
    points: list[
        dict[str, Any]
    ]  # grid: every point (in start order); random: the samples; optuna: probes only
    split: str  # the evaluation split the metric is computed on (validation)
    experiment_path: Path

    @property
    def n_trials(self) -> int:
        return self.cfg.num_samples if self.space.search == "optuna" else len(self.points)

    @property
    def expands_grid(self) -> bool:
        """Tune expands the grid itself (given order); a shuffled grid runs ``points`` as listed."""
        return self.space.grid_order == "given" and not self.space.promotes

    @property
    def tune_samples(self) -> int:
        """Tune's num_samples: Optuna draws them; a grid in given order expands once; random and a
        shuffled grid run their listed points."""
        if self.space.search == "optuna":
            return self.cfg.num_samples
        return 1 if self.expands_grid else len(self.points)

    @property
    def digest(self) -> str:
        return config_digest(self.cfg)


# --- validation (no Ray) ----------------------------------------------------------------------


def _resolve(cfg: SweepConfig) -> SweepConfig:
    out = Path(cfg.out).resolve()
    storage = Path(cfg.storage_path).resolve() if cfg.storage_path else out / "tune"
    space = Path(cfg.space)
    space_ref = str(space.resolve()) if space.suffix or space.exists() else cfg.space
    return cfg.model_copy(update={"out": str(out), "storage_path": str(storage), "space": space_ref})


def _probe_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Points at every range end and every choice (the values an adaptive search may pick)."""
    ends: dict[str, list[Any]] = {}
    for key, p in space.params.items():
        kind = p.type
        if kind in ("uniform", "loguniform"):
            ends[key] = [p.low, p.high]
        elif kind == "randint":
            ends[key] = [p.low, p.high - 1]
        else:
            ends[key] = list(p.values)
    first = {k: v[0] for k, v in ends.items()}
    return [first] + [{**first, k: v} for k, values in ends.items() for v in values[1:]]


def _check_point(base: FinetuneConfig, point: dict[str, Any], source: str) -> None:
    cfg = validate_point(base, point, source)
    try:
        finetune.resolve(cfg)  # relevance method names, init_from folders
    except ValueError as err:
        raise ConfigError(f"{source} {point}: {err}") from None


def prepare(cfg: SweepConfig) -> Plan:
    """Validate the sweep before any Ray work: space, metric, scheduler, every point that will run."""
    cfg = _resolve(cfg)
    space = load_space(cfg.space)
    ft = cfg.finetune
    split = ft.data.eval_split
    if "loss.name" not in space.params and space.method != ft.loss.name:
        raise ConfigError(
            f"space {cfg.space} is for method {space.method!r} but finetune.loss.name is "
            f"{ft.loss.name!r}; use that method's space or set finetune.loss.name: {space.method}"
        )
    if not space.metric.startswith(f"{split}_"):
        raise ConfigError(
            f"space metric {space.metric!r} is not a metric of the evaluation split {split!r} "
            f"(trials report {split}_acc, {split}_wga, ...); set the space's metric to "
            f"{split}_<name> or finetune.data.eval_split to the metric's split"
        )
    if space.scheduler.name == "asha" and space.scheduler.grace_period > ft.train.epochs:
        raise ConfigError(
            f"scheduler.grace_period {space.scheduler.grace_period} exceeds finetune.train.epochs "
            f"{ft.train.epochs}; lower the grace period or train longer"
        )
    if space.search == "grid":
        points = grid_points(space)
        if space.grid_order == "shuffled":
            random.Random(cfg.seed).shuffle(points)
    elif space.search == "random":
        rng = random.Random(cfg.seed)
        points = [sample_point(space, rng) for _ in range(cfg.num_samples)]
    else:
        points = _probe_points(space)
    for i, point in enumerate(points):
        _check_point(ft, point, f"space {cfg.space} point {i}")
    if cfg.base is not None:
        _check_point(cfg.base, {}, "base")
    return Plan(cfg, space, points, split, Path(cfg.storage_path) / cfg.name)


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# --- Tune objects ---------------------------------------------------------------------------------


def _schedule(plan: Plan, max_concurrent: int) -> tuple[Any, Any]:
    return schedule(
        plan.space,
        plan.points,
        plan.expands_grid,
        plan.cfg.seed,
        max_concurrent,
        plan.cfg.finetune.train.epochs,
    )


def _setup(plan: Plan, tables: dict[str, Any], init_from: str | None) -> dict[str, Any]:
    return {
        "finetune": plan.cfg.finetune.model_dump(mode="json"),
        "tables": tables,
        "init_from": init_from,
        "trials": str(Path(plan.cfg.out) / "trials"),
        "split": plan.split,
    }


def _trainable(plan: Plan, setup: dict[str, Any]) -> Any:
    from ray import tune

    driver, _ = trial_resources(plan.cfg.finetune)
    return tune.with_resources(tune.with_parameters(run_trial, setup=setup), driver)


def build(
    plan: Plan,
    setup: dict[str, Any],
    max_concurrent: int,
    parent_run_id: str | None = None,
    callbacks: Sequence[Any] = (),
) -> Any:
    """The unexecuted Tuner of a prepared sweep (never starts Ray).

    ``setup``: what every trial needs (:func:`_setup`); ``parent_run_id``: the MLflow parent run
    (each trial becomes its child run); ``callbacks``: extra Tune callbacks.
    """
    from ray import tune

    from unspur.workflows.sweep.orphans import Orphans
    from unspur.workflows.sweep.runs import TrialRunLogger

    cfg, space = plan.cfg, plan.space
    search, scheduler = _schedule(plan, max_concurrent)
    orphans = Orphans(setup["trials"])
    loggers = []
    if parent_run_id is not None:
        tags = {"mlflow.parentRunId": parent_run_id, "job": "sweep_trial", "sweep": cfg.name}
        loggers.append(
            TrialRunLogger(
                tracking_uri=tracking.tracking_uri(cfg.out),
                experiment_name=cfg.experiment,
                tags=tags,
                orphans=orphans,
            )
        )
    return tune.Tuner(
        _trainable(plan, setup),
        param_space=param_space(space, plan.expands_grid),
        tune_config=tune.TuneConfig(
            metric=space.metric,
            mode=space.mode,
            search_alg=search,
            scheduler=scheduler,
            num_samples=plan.tune_samples,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=cfg.storage_path,
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=cfg.trial_max_failures),
            callbacks=[orphans, *loggers, *callbacks],
        ),
    )


# --- running ----------------------------------------------------------------------------------------


def _train_base(plan: Plan) -> tuple[str | None, dict[str, Any] | None]:
    """Train ``cfg.base`` once into ``<out>/base`` (reused when there with the same config)."""
    cfg = plan.cfg
    if cfg.base is None:
        return (str(Path(cfg.finetune.init_from).resolve()) if cfg.finetune.init_from else None), None
    base = cfg.base.model_copy(update={"out": str(Path(cfg.out) / "base")})
    base = finetune.resolve(base.model_copy(update={"run": base.run.model_copy(update={"track": False})}))
    model_dir = Path(base.out) / "model"
    saved = model_dir / "config.yaml"
    if saved.is_file():
        if yaml.safe_load(saved.read_text()) != base.model_dump(mode="json"):
            raise ConfigError(
                f"{model_dir} holds a base model trained with another config than `base`; "
                "use another --out, or delete that folder to retrain it"
            )
        return str(model_dir), None
    return str(model_dir), finetune.run(base)


def _stops_train_workers(plan: Plan) -> bool:
    """ASHA over Ray Train trials: a stopped trial's workers are freed through Ray's State API."""
    return plan.cfg.finetune.run.num_workers > 0 and plan.space.scheduler.name == "asha"


def _start_ray(plan: Plan) -> None:
    """Join RAY_ADDRESS (or the Ray already running here), else start a local Ray, WITH its dashboard
    when the sweep needs Ray's State API (:func:`_stops_train_workers`)."""
    import ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        ray.init(num_cpus=os.cpu_count(), include_dashboard=_stops_train_workers(plan), log_to_driver=True)
    init_ray()


def _check_stoppable(plan: Plan) -> None:
    """Refuse ASHA over Ray Train trials where Ray's State API is unavailable (Ray started without
    its dashboard): the placement groups of stopped trials would never be freed and later trials
    would wait for CPUs forever."""
    import ray

    if not _stops_train_workers(plan):
        return

    @ray.remote(num_cpus=0)
    def state_api_problem() -> str | None:
        from ray.util.state import list_actors

        try:  # this cluster's address: with another Ray on the machine, "auto" finds two
            list_actors(address=ray.get_runtime_context().gcs_address, limit=1, timeout=10)
        except Exception as err:
            return f"{type(err).__name__}: {err}"
        return None

    problem = ray.get(state_api_problem.remote())
    if problem is not None:
        raise ConfigError(
            "the ASHA scheduler stops or pauses trials, but this Ray's State API does not answer "
            f"({problem[:300]}), so Ray Train cannot free a stopped trial's workers; start Ray "
            "with its dashboard, use scheduler fifo, or set finetune.run.num_workers: 0"
        )


def _state(plan: Plan) -> dict[str, Any] | None:
    """The sweep state of an earlier run of this sweep (None: first run); refuses another config."""
    state_file = plan.experiment_path / STATE
    state = json.loads(state_file.read_text()) if state_file.is_file() else None
    if state is not None and state["digest"] != plan.digest:
        raise ConfigError(
            f"a sweep named {plan.cfg.name!r} with another config exists in {plan.experiment_path}; "
            "rerun it with the same config to resume it, or pick a new name / out"
        )
    return state


def _tuner(plan: Plan, setup: dict[str, Any], callbacks: Sequence[Any]) -> tuple[Any, ParentRun, bool]:
    """A fresh Tuner with a new parent run, or the interrupted sweep's Tuner restored."""
    import ray
    from ray import tune

    cfg, path = plan.cfg, plan.experiment_path
    state_file = path / STATE
    state = _state(plan)
    restorable = tune.Tuner.can_restore(str(path))
    if restorable and state is None:
        raise ConfigError(
            f"{path} holds Tune state but no {STATE} (not an unspur sweep, or damaged); pick a new name / out"
        )
    if restorable:
        parent = ParentRun.reopen(cfg.out, state["parent_run_id"])
        parent.end_stale_children()
        tuner = tune.Tuner.restore(
            str(path),
            trainable=_trainable(plan, setup),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        return tuner, parent, True
    _, need = trial_resources(cfg.finetune)
    limit = concurrency(ray.cluster_resources(), need, cfg.max_concurrent_trials, plan.n_trials)
    parent = (
        ParentRun.reopen(cfg.out, state["parent_run_id"])
        if state is not None
        else ParentRun.create(cfg, plan.space, plan.points)
    )
    path.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"digest": plan.digest, "parent_run_id": parent.run_id}))
    return build(plan, setup, limit, parent.run_id, callbacks), parent, False


def run(cfg: SweepConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Validate, train the base (if any), run or resume the sweep, log and export the best config.

    ``callbacks``: extra Ray Tune callbacks. Returns the summary (also ``<out>/sweep_summary.json``).
    """
    plan = prepare(cfg)
    cfg = plan.cfg
    _state(plan)  # a changed config is refused before Ray starts
    ft = cfg.finetune.model_copy(update={"out": cfg.out, "init_from": None})
    tables = finetune.prepare(finetune.resolve(ft))  # so are missing or unusable images
    _start_ray(plan)
    _check_stoppable(plan)
    init_from, base_summary = _train_base(plan)
    setup = _setup(plan, tables, init_from)
    tuner, parent, resumed = _tuner(plan, setup, callbacks)
    if base_summary:
        parent.log_base(base_summary)
    with tracking.scoped_tracking_uri():
        results = tuner.fit()
    summary, table = _summarize(plan, results, init_from, Path(setup["trials"]))
    summary.update({"parent_run_id": parent.run_id, "resumed": resumed})
    out = Path(cfg.out)
    (out / "sweep_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    figure = metric_plot(table, plan.space) if cfg.plot and len(table) else None
    if figure is not None:
        figure.savefig(out / "metric_vs_params.png", dpi=100)
    parent.finish(summary, table, figure, summary.get("best_config"))
    if summary["interrupted"]:
        print(
            f"sweep interrupted: rerun the same command to resume it ({plan.experiment_path})",
            file=sys.stderr,
        )
    return summary


def _summarize(
    plan: Plan, results: Any, init_from: str | None, trials_dir: Path
) -> tuple[dict[str, Any], Any]:
    """Write ``trials.csv`` (and, once every trial has ended, ``best_finetune.yaml``); (summary, table).
    ``unclaimed``: folders of trials a killed driver started that the restored sweep never resumed."""
    from unspur.workflows.sweep.orphans import unclaimed

    out = Path(plan.cfg.out)
    interrupted = results.num_terminated + results.num_errors < plan.n_trials
    table = trial_table(results, plan.space, plan.split, plan.cfg.finetune.train.epochs, interrupted)
    table.to_csv(out / "trials.csv", index=False)
    summary: dict[str, Any] = {
        "experiment_path": str(plan.experiment_path),
        "interrupted": interrupted,
        "metric": plan.space.metric,
        "trials": len(table),
        "failed": int((table["status"] == "failed").sum()),
        "trial_epochs": int(table["epochs"].sum()),
        "base_model": init_from,
        "unclaimed": unclaimed(trials_dir, table["trial_id"]),
    }
    if summary["unclaimed"]:
        print(
            f"trials {summary['unclaimed']} under {trials_dir} were started but not resumed", file=sys.stderr
        )
    best = best_trial(table, plan.space)
    if best is not None and not interrupted:
        # a trial the scheduler stopped early still leaves the model it was ranked by (trial_model)
        model = trial_model(trials_dir / best["trial_id"])
        summary.update(
            {
                "best": best,
                "best_config": str(export_best(plan.cfg.finetune, best, out, init_from)),
                "best_trial_model": str(model) if model else None,
                "best_model": str(_keep_model(model, out)) if model else None,
            }
        )
    if plan.cfg.plot and len(table):
        summary["plot"] = str(out / "metric_vs_params.png")
    return summary, table


def _keep_model(model: Path, out: Path) -> Path:
    """Copy the best trial's model (the weights only: no optimizer state) to ``<out>/best_model``."""
    target = out / "best_model"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model, target, ignore=shutil.ignore_patterns(TRAIN_STATE))
    return target


def _flag_overrides(args: Any) -> list[str]:
    return ([f"space={args.space}"] if args.space is not None else []) + (
        [f"num_samples={args.samples}"] if args.samples is not None else []
    )


def main(argv: list[str] | None = None) -> int:
    """``unspur sweep --config FILE --out DIR [--space SPACE] [--samples N] [--address A] key=value ...``."""
    return main_for(
        "sweep", SweepConfig, run, argv, needs_ray=False, flags=FLAGS, flag_overrides=_flag_overrides
    )


def outputs(cfg: SweepConfig) -> dict[str, Any]:
    """What a pipeline stage of this job offers later stages: ``model`` (the model the best trial
    left, even if the scheduler stopped it early) and ``best_config`` (its finetune config)."""
    out = Path(cfg.out).resolve()
    return {"model": str(out / "best_model"), "best_config": str(out / BEST_CONFIG)}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
