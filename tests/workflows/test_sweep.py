"""``unspur sweep`` on the local Ray: Ray Train trials with MLflow parent/child runs and the best
config exported; in-process trials interrupted, resumed without re-running finished trials, and a
failing trial recorded; bad spaces and resource requests refused before any trial runs. The fault
drill: the driver of ``unspur sweep`` SIGKILLed while a trial trains, then the same command again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from ray import tune

from unspur.config import ConfigError, FinetuneConfig, SweepConfig, load_config
from unspur.workflows.sweep import job as sweep

REPO = Path(__file__).resolve().parents[2]
TINY_FINETUNE = {
    "data": {
        "spuriousworld": {"image_size": 32, "n_train": 16, "n_val": 16, "n_test": 1},
        "eval_split": "val",
    },
    "model": {
        "name": "vit_tiny_synth",
        "img_size": 32,
        "kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2},
    },
    "loss": {"name": "cft"},
    "train": {"epochs": 2, "batch_size": 8, "warmup_epochs": 0, "num_threads": 1},
    "run": {"figure_images": 0, "num_workers": 0},
}


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _space(
    tmp_path: Path,
    params: dict,
    search: str = "grid",
    scheduler: str = "fifo",
    order: str | None = None,
    variant: str = "stopping",
) -> Path:
    return _write(
        tmp_path / f"space_{search}_{scheduler}.yaml",
        {
            "method": "cft",
            "search": search,
            "scheduler": {
                "name": scheduler,
                "grace_period": 1,
                **({"variant": variant} if scheduler == "asha" else {}),
            },
            "params": params,
            **({"order": order} if order else {}),
        },
    )


def _config(tmp_path: Path, space: Path, **changes) -> Path:
    finetune = json.loads(json.dumps(TINY_FINETUNE))
    for key, value in changes.pop("finetune", {}).items():
        section, name = key.split(".")
        finetune[section][name] = value
    return _write(tmp_path / "sweep.yaml", {"space": str(space), "finetune": finetune, **changes})


def _client(out: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def _runs(out: Path) -> tuple:
    client = _client(out)
    experiment = client.get_experiment_by_name("sweep")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


@pytest.fixture(autouse=True)
def _own_tracking(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_optuna_sweep_of_ray_train_trials_logs_parent_children_and_exports_best(
    ray_local, tmp_path: Path
) -> None:
    space = _space(
        tmp_path,
        {
            "loss.lambda_align": {"type": "uniform", "low": 0.2, "high": 1.0},
            "relevance": {"type": "choice", "values": ["rollout"]},
        },
        search="optuna",
    )
    cfg = _config(tmp_path, space, finetune={"run.num_workers": 1, "run.cpus_per_worker": 1})
    out = tmp_path / "out"
    assert sweep.main(["--config", str(cfg), "--out", str(out), "--samples", "2"]) == 0

    summary = json.loads((out / "sweep_summary.json").read_text())
    assert summary["trials"] == 2 and summary["failed"] == 0 and not summary["interrupted"]
    assert summary["trial_epochs"] == 4 and summary["metric"] == "val_wga"
    best = summary["best"]
    exported = load_config(FinetuneConfig, summary["best_config"])  # what `unspur finetune --config` reads
    assert exported.loss.lambda_align == pytest.approx(best["params"]["loss.lambda_align"])
    assert exported.data.eval_split == "val" and exported.out == str(out / "best")
    assert (Path(summary["best_model"]) / "model.safetensors").is_file()
    assert (out / "metric_vs_params.png").stat().st_size > 1000

    client, parents, children = _runs(out)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert parent.info.run_id == summary["parent_run_id"]
    assert parent.data.metrics["best_val_wga"] == pytest.approx(best["val_wga"])
    assert parent.data.params["finetune.run.num_workers"] == "1"
    assert len(children) == 2 and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    history = client.get_metric_history(children[0].info.run_id, "val_wga")
    assert len(history) == 2  # one validation report per epoch
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"best_finetune.yaml", "trials.csv", "space.yaml", "figures"} <= artifacts


class InterruptAfterFirstTrial(tune.Callback):
    """Interrupts the sweep (as Ctrl+C does: Tune saves its state and returns) when a trial completes."""

    fired = False  # once per test session (a restored sweep restores this callback too)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if not InterruptAfterFirstTrial.fired:
            InterruptAfterFirstTrial.fired = True
            os.kill(os.getpid(), signal.SIGUSR1)


def test_interrupted_sweep_resumes_without_rerunning_finished_trials_and_records_failure(
    ray_local, tmp_path: Path
) -> None:
    lrs = {"train.lr": {"type": "grid", "values": [1.0e-4, 1.0e30]}}
    space = _space(tmp_path, lrs, scheduler="asha", order="given")  # the good trial first
    cfg = load_config(
        SweepConfig, _config(tmp_path, space, max_concurrent_trials=1), [f"out={tmp_path / 'out'}"]
    )
    first = sweep.run(cfg, callbacks=[InterruptAfterFirstTrial()])
    assert first["interrupted"] and "best_config" not in first
    done = sorted((tmp_path / "out" / "trials").glob("*/finetune_summary.json"))
    assert len(done) == 1
    stamp = done[0].stat().st_mtime_ns

    second = sweep.run(cfg)  # the same sweep again: restore
    assert second["resumed"] and not second["interrupted"]
    assert second["trials"] == 2 and second["failed"] == 1
    assert done[0].stat().st_mtime_ns == stamp  # the finished trial was not re-run
    assert (
        second["best"]["params"] == {"train.lr": 1.0e-4} and second["parent_run_id"] == first["parent_run_id"]
    )
    table = (tmp_path / "out" / "trials.csv").read_text()
    assert "NonFiniteLossError" in table

    _, parents, children = _runs(tmp_path / "out")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    statuses = sorted(c.info.status for c in children)
    assert "RUNNING" not in statuses and statuses.count("FINISHED") == 1 and statuses.count("FAILED") == 1
    failed = next(c for c in children if c.info.status == "FAILED")
    assert "NonFiniteLossError" in failed.data.tags["error"]
    with pytest.raises(ConfigError, match="with another config exists"):  # not silently mixed into it
        sweep.run(cfg.model_copy(update={"seed": 1}))


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ({"loss.lambda_bogus": {"type": "uniform", "low": 0.1, "high": 1.0}}, "unknown parameter"),
        ({"loss.lambda_align": {"type": "uniform", "low": 1.0, "high": 0.5}}, "impossible range"),
        (
            {"loss.lambda_concept": {"type": "uniform", "low": -1.0, "high": 1.0}},
            "loss.lambda_concept: Input should be greater than or equal to 0",
        ),
        (
            {"relevance": {"type": "grid", "values": ["rollout", "gradcam"]}},
            "unknown relevance method 'gradcam'",
        ),
    ],
)
def test_bad_space_fails_before_any_ray_work(tmp_path: Path, monkeypatch, capsys, param, message) -> None:
    monkeypatch.setattr(sweep, "_start_ray", lambda *_: pytest.fail("Ray was started for an invalid sweep"))
    search = "grid" if next(iter(param.values()))["type"] == "grid" else "random"
    cfg = _config(tmp_path, _space(tmp_path, param, search=search))
    assert sweep.main(["--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "tune").exists()


def test_bad_config_is_refused(tmp_path: Path, capsys) -> None:
    space = _space(tmp_path, {"loss.lambda_align": {"type": "grid", "values": [0.5]}})
    cfg = _config(tmp_path, space, finetune={"data.eval_split": "test"})
    assert sweep.main(["--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "never on test" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is for method 'cft' but finetune.loss.name is 'erm'"):
        sweep.prepare(load_config(SweepConfig, _config(tmp_path, space, finetune={"loss.name": "erm"})))
    asha = _space(tmp_path, {"loss.lambda_align": {"type": "grid", "values": [0.5]}}, scheduler="asha")
    cfg = load_config(SweepConfig, _config(tmp_path, asha), ["finetune.train.epochs=1"])
    assert sweep.prepare(cfg).n_trials == 1
    with pytest.raises(ConfigError, match="grace_period 2 exceeds finetune.train.epochs 1"):
        sweep.prepare(
            cfg.model_copy(
                update={
                    "space": str(
                        _write(
                            tmp_path / "g.yaml",
                            {
                                **yaml.safe_load(asha.read_text()),
                                "scheduler": {"name": "asha", "grace_period": 2},
                            },
                        )
                    )
                }
            )
        )


def test_an_asha_grid_starts_in_a_seeded_shuffled_order_and_a_fifo_grid_as_given(tmp_path: Path) -> None:
    """ASHA judges a trial against those that reached its rung first: a grid listed in order of
    quality would stop nothing, so under ASHA the grid's points start in an order drawn from the seed."""
    lrs = {"train.lr": {"type": "grid", "values": [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4]}}
    given = [{"train.lr": v} for v in lrs["train.lr"]["values"]]

    def plan(scheduler: str, seed: int = 0, order: str | None = None):
        space = yaml.safe_load(_space(tmp_path, lrs, scheduler=scheduler).read_text())
        path = _write(tmp_path / f"space_{scheduler}_{order}.yaml", {**space, "order": order})
        return sweep.prepare(load_config(SweepConfig, _config(tmp_path, path, seed=seed)))

    fifo, asha = plan("fifo"), plan("asha")
    assert fifo.points == given and fifo.expands_grid and fifo.tune_samples == 1
    assert asha.points != given and sorted(asha.points, key=lambda p: p["train.lr"]) == given
    assert not asha.expands_grid and asha.tune_samples == asha.n_trials == 6
    assert plan("asha").points == asha.points and plan("asha", seed=1).points != asha.points
    assert plan("asha", order="given").points == given and plan("fifo", order="shuffled").points != given
    # Tune receives the listed points in that order, each fixing every param
    search = sweep._schedule(asha, 2)[0]
    assert [dict(p) for p in search._points_to_evaluate] == asha.points


def test_concurrency_fits_trials_to_the_cluster() -> None:
    cpu2 = {"CPU": 2.0}
    driver, need = sweep.trial_resources(load_config(FinetuneConfig, None, ["run.num_workers=1"]))
    assert driver["cpu"] == 0 and need == {"CPU": 1.0, "GPU": 0.0}
    assert sweep.concurrency(cpu2, need, None, n_trials=4) == 2
    assert sweep.concurrency(cpu2, need, None, n_trials=1) == 1
    driver, need = sweep.trial_resources(
        load_config(FinetuneConfig, None, ["run.num_workers=0", "run.cpus_per_worker=2"])
    )
    assert driver["cpu"] == 2 and sweep.concurrency(cpu2, need, None, 4) == 1
    with pytest.raises(ConfigError, match="fit only 2 trials"):
        sweep.concurrency(cpu2, {"CPU": 1.0}, 3, n_trials=4)
    with pytest.raises(ConfigError, match="one trial needs"):
        sweep.concurrency({"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0}, None, n_trials=4)


def test_more_concurrent_trials_than_the_cluster_fits_is_refused(ray_local, tmp_path: Path, capsys) -> None:
    space = _space(tmp_path, {"loss.lambda_align": {"type": "grid", "values": [0.2, 0.5, 0.8]}})
    cfg = _config(
        tmp_path, space, max_concurrent_trials=3, finetune={"run.num_workers": 1, "run.cpus_per_worker": 1}
    )
    assert sweep.main(["--config", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "max_concurrent_trials=3 but the cluster's {'CPU': 2.0" in capsys.readouterr().err
    asha = _space(tmp_path, {"loss.lambda_align": {"type": "grid", "values": [0.2]}}, scheduler="asha")
    cfg = _config(tmp_path, asha, finetune={"run.num_workers": 1, "run.cpus_per_worker": 1})
    assert sweep.main(["--config", str(cfg), "--out", str(tmp_path / "out2")]) == 2  # no dashboard here
    assert "State API does not answer" in capsys.readouterr().err
    assert not (tmp_path / "out" / "trials").exists()


def test_a_trial_restarted_with_every_epoch_done_reports_its_last_record(tmp_path, monkeypatch) -> None:
    from unspur.workflows.sweep import trial

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", reports.append)
    cfg = FinetuneConfig.model_validate({"out": str(tmp_path), "model": {"name": "vit_tiny_synth"}})
    assert not trial.report_if_silent(cfg, "val")  # no summary yet: nothing to say
    history = [
        {"epoch": -1, "eval": {"wga": 0.1}},
        {"epoch": 3, "eval": {"wga": 0.5}, "kept": {"wga": 0.5}, "train": {"loss": 1.0}},
    ]
    summary = tmp_path / "finetune_summary.json"
    summary.write_text(json.dumps({"history": history, "epochs_trained_this_run": 2}))
    assert not trial.report_if_silent(cfg, "val") and reports == []  # this run reported its epochs
    summary.write_text(json.dumps({"history": history, "epochs_trained_this_run": 0}))
    assert trial.report_if_silent(cfg, "val")
    assert reports == [
        {"epoch": 3, "val_epoch_wga": 0.5, "val_wga": 0.5, "train_loss": 1.0, "epochs_done": 4}
    ]


def test_trial_metrics_and_best_trial_rules() -> None:
    from unspur.tune_spaces import load_space
    from unspur.workflows.sweep.report import best_trial
    from unspur.workflows.sweep.trial import trial_metrics

    report = {
        "epoch": 2,
        "eval/wga": 0.5,
        "eval/per_group/bird/water": 1.0,
        "kept/wga": 0.75,  # an earlier epoch was better: the trial keeps (and is judged by) that one
        "train/loss": 2.0,
        "lr": 1e-4,
    }
    assert trial_metrics(report, "val") == {
        "epoch": 2,
        "val_epoch_wga": 0.5,
        "val_epoch_per_group/bird/water": 1.0,
        "val_wga": 0.75,
        "train_loss": 2.0,
        "lr": 1e-4,
        "epochs_done": 3,
    }
    space = load_space("cft")
    rows = [
        ("collapsed", 8, 0.0, "complete"),
        ("stopped", 1, 0.775, "stopped"),
        ("done", 8, 0.775, "complete"),
        ("broken", 3, 0.9, "failed"),
    ]
    table = pd.DataFrame(
        [
            {"trial_id": t, "epochs": e, "val_wga": v, "status": s, **{k: 0.5 for k in space.params}}
            for t, e, v, s in rows
        ]
    )
    assert best_trial(table, space)["trial_id"] == "done"  # last metric first, then epochs; failed left out
    assert best_trial(table[table["trial_id"] != "done"], space)["trial_id"] == "stopped"
    assert best_trial(table[table["status"] == "failed"], space) is None


class _Trial:
    """What Ray's MLflowLoggerCallback reads of a Tune trial: its name and its config."""

    def __init__(self, name: str, config: dict) -> None:
        self.name, self.config, self.trial_id = name, config, name.removeprefix("trial_")

    def __str__(self) -> str:
        return self.name


def test_a_restarted_trial_reopens_its_child_run(tmp_path: Path) -> None:
    """Two loggers, as a killed driver and its restored successor: one child run per trial name,
    metrics stepped by ``epochs_done`` (the restarted trial's Tune iteration starts again at 1)."""
    from unspur.workflows.sweep.runs import TrialRunLogger

    client = _client(tmp_path)
    parent = client.create_run(client.create_experiment("sweep")).info.run_id
    tags = {"mlflow.parentRunId": parent, "job": "sweep_trial"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, again = (TrialRunLogger(tracking_uri=uri, experiment_name="sweep", tags=tags) for _ in range(2))
    first.setup()
    killed, other = _Trial("trial_a", {"train.lr": 0.1}), _Trial("trial_b", {"train.lr": 0.2})
    first.log_trial_start(killed)
    first.log_trial_result(1, killed, {"val_wga": 0.5, "epochs_done": 1, "training_iteration": 1})
    again.setup()  # the restored driver: nothing in memory
    for trial in (killed, other):
        again.log_trial_start(trial)
        again.log_trial_result(1, trial, {"val_wga": 0.6, "epochs_done": 2, "training_iteration": 1})
        again.log_trial_end(trial)
    _, _, children = _runs(tmp_path)
    assert sorted(c.data.tags["trial_name"] for c in children) == ["trial_a", "trial_b"]
    assert {c.info.status for c in children} == {"FINISHED"}
    run_a = next(c for c in children if c.data.tags["trial_name"] == "trial_a").info.run_id
    assert [m.step for m in client.get_metric_history(run_a, "val_wga")] == [1, 2]


@pytest.mark.parametrize("variant", ["stopping", "promotion"])
def test_asha_ranks_trials_by_the_model_they_keep_and_a_stopped_trial_leaves_it(
    ray_local, tmp_path: Path, variant: str
) -> None:
    """With run.select best_wga a trial reports its best epoch so far; whatever ASHA does, every
    trial leaves the model its last report describes, and the best trial's lands in best_model.
    Under promotion, trials wait (paused) at a rung and resume from their checkpoint when promoted:
    each epoch is reported once, and the best trial trains every epoch."""
    from unspur.models import read_extra
    from unspur.workflows.sweep.report import trial_model

    lrs = {"train.lr": {"type": "grid", "values": [1e-4, 3e-3, 3e-2, 3e-1]}}
    space = _space(tmp_path, lrs, scheduler="asha", variant=variant)
    changes = {"train.epochs": 4, "run.select": "best_wga"}
    cfg = load_config(SweepConfig, _config(tmp_path, space, max_concurrent_trials=2, finetune=changes))
    summary = sweep.run(cfg.model_copy(update={"out": str(tmp_path / "out")}))
    table = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(table) == 4 and summary["failed"] == 0
    for row in table.itertuples():
        kept = trial_model(tmp_path / "out" / "trials" / row.trial_id)
        assert kept is not None, f"trial {row.trial_id} ({row.status}) left no model"
        assert read_extra(kept)["eval"]["wga"] == pytest.approx(row.val_wga)
    best = read_extra(summary["best_model"])["eval"]["wga"]
    assert best == pytest.approx(table["val_wga"].max()) == pytest.approx(summary["best"]["val_wga"])
    if variant == "promotion":
        client, _, children = _runs(tmp_path / "out")
        for child in children:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "epochs_done")]
            assert sorted(steps) == list(range(1, max(steps) + 1)), f"epochs reported {steps}"
        assert table["epochs"].max() == 4 and table["epochs"].sum() < 16


def _mid_run(trials: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(trials finished, {trial still training: its checkpoints}) as on disk now."""
    finished = sorted(p.parent.name for p in trials.glob("*/finetune_summary.json"))
    training = {
        d.name: sorted(p.parent.name for p in d.glob("checkpoints/*/checkpoint_*/train_state.pt"))
        for d in trials.iterdir()
        if d.is_dir() and d.name not in finished
    }
    return finished, {k: v for k, v in training.items() if v}


def _cli_sweep(tmp_path: Path, space: Path, changes: dict) -> tuple[list[str], dict, Path]:
    """(command, environment, out) of ``unspur sweep`` over ``space`` as its own process, one trial
    at a time, with its own local Ray and tracking store."""
    cfg = _config(tmp_path, space, max_concurrent_trials=1, plot=False, finetune=changes)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "unspur.workflows.cli", "sweep", "--config", str(cfg), "--out", str(out)]
    # a busy machine: the driver's own Ray may take more than Ray's default 30 s to register its node
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_raylet_start_wait_time_s": "180"}
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return command, env, out


def _kill_mid_trial(
    command: list[str], env: dict, out: Path, log: Path, timeout: float = 600.0, checkpointed: int = 1
) -> dict:
    """Start the sweep, SIGKILL its driver once a trial has finished and ``checkpointed`` others
    have a checkpoint (``checkpointed`` > 1: that many, finished or not); 2 s later, list what is
    left of its process group (its own Ray's processes) and end it."""
    start = time.perf_counter()
    with log.open("w") as sink:
        driver = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    record: dict = {}
    try:
        while driver.poll() is None and time.perf_counter() - start < timeout:
            finished, training = _mid_run(out / "trials") if (out / "trials").is_dir() else ([], {})
            ready = (
                finished and training if checkpointed == 1 else len(finished) + len(training) >= checkpointed
            )
            if ready:
                os.kill(driver.pid, signal.SIGKILL)
                record = {"finished": finished, "training": training}
                record["killed_after_s"] = round(time.perf_counter() - start, 1)
                break
            time.sleep(0.02)
        driver.wait(timeout=60)
    finally:
        time.sleep(2)
        left = subprocess.run(["pgrep", "-l", "-g", str(driver.pid)], capture_output=True, text=True)
        record["survivors"] = sorted(line.split()[-1] for line in left.stdout.splitlines())
        if record["survivors"]:
            os.killpg(driver.pid, signal.SIGKILL)
    return record


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_sweep_whose_driver_is_killed_finishes_every_trial_once_with_one_child_run_each(
    tmp_path: Path,
) -> None:
    """3 in-process trials one at a time (4 epochs of 64 images); the driver is SIGKILLed once a
    trial has finished and the next has a checkpoint; the same command restores the sweep."""
    lrs, epochs = [3.0e-4, 1.0e-3, 3.0e-3], 4
    space = _space(tmp_path, {"train.lr": {"type": "grid", "values": lrs}})
    world = {"image_size": 32, "n_train": 64, "n_val": 16, "n_test": 1}
    changes = {"data.spuriousworld": world, "train.epochs": epochs}
    command, env, out = _cli_sweep(tmp_path, space, changes)
    drill = _kill_mid_trial(command, env, out, tmp_path / "killed.log")
    assert "killed_after_s" in drill, (tmp_path / "killed.log").read_text()[-3000:]
    done, resumed = drill["finished"][0], next(iter(drill["training"]))
    stamp = (out / "trials" / done / "finetune_summary.json").stat().st_mtime_ns

    start = time.perf_counter()
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    drill["restored_s"] = round(time.perf_counter() - start, 1)
    errors = [
        line for line in (again.stdout + again.stderr).splitlines() if "Error" in line or "error:" in line
    ]
    assert again.returncode == 0, "\n".join(errors)[-3000:] or again.stderr[-3000:]
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert summary["resumed"] and not summary["interrupted"] and summary["failed"] == 0
    table = pd.read_csv(out / "trials.csv", dtype={"trial_id": str})
    assert len(table) == len(lrs) and sorted(table["train.lr"]) == lrs  # every point, once
    assert set(table["status"]) == {"complete"} and set(table["epochs"]) == {epochs}
    # finished once: the trial done before the kill trained no epoch again (Tune restarts it when its
    # last snapshot predates the finish; it then finds every epoch done and reports its last record,
    # trial.report_if_silent, so the table above has its metrics); the one killed mid-run resumed
    # from its checkpoint instead of starting over
    done_summary = out / "trials" / done / "finetune_summary.json"
    rerun = done_summary.stat().st_mtime_ns != stamp
    assert not rerun or json.loads(done_summary.read_text())["epochs_trained_this_run"] == 0
    drill["finished_trial_restarted"] = rerun
    starts = json.loads((out / "trials" / resumed / "finetune_summary.json").read_text())["start_epochs"]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 1, starts

    client, parents, children = _runs(out)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    names = sorted(c.data.tags["trial_name"] for c in children)
    assert names == sorted(f"trial_{t}" for t in table["trial_id"])  # one child run per trial
    assert {c.info.status for c in children} == {"FINISHED"}
    lost = {}
    for child in children:  # every epoch of every trial in its one run, but for the report in flight
        name = child.data.tags["trial_name"]
        steps = {m.step for m in client.get_metric_history(child.info.run_id, "val_wga")}
        after = set(range(starts[1] + 1, epochs + 1)) if name == f"trial_{resumed}" else set()
        assert after <= steps <= set(range(1, epochs + 1)), (name, steps)
        lost[name] = sorted(set(range(1, epochs + 1)) - steps)
        assert len(lost[name]) <= (name == f"trial_{resumed}"), (name, steps)
    drill.update({"child_runs": len(children), "resumed_start_epochs": starts, "steps_lost": lost})
    print("sweep drill:", json.dumps(drill))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_promotion_sweep_whose_driver_is_killed_resumes_its_trials_once_each(tmp_path: Path) -> None:
    """Promotion-based ASHA, 3 in-process trials one at a time, 3 epochs: trials wait (paused) at
    rungs; the driver is SIGKILLed once two trials have a checkpoint, and the same command
    restores the sweep: every point once, a trial trained to the last epoch, one child run per
    trial, no epoch reported twice. Tune saves the killed driver's state only once (at its start), so
    the trials it started are unknown to the restored sweep: each is adopted by the restored trial
    of its point, which resumes in its folder (a link) and reopens its child run."""
    lrs, epochs = [3.0e-4, 1.0e-3, 3.0e-3], 3
    space = _space(
        tmp_path, {"train.lr": {"type": "grid", "values": lrs}}, scheduler="asha", variant="promotion"
    )
    world = {"image_size": 32, "n_train": 32, "n_val": 16, "n_test": 1}
    changes = {"data.spuriousworld": world, "train.epochs": epochs, "run.select": "best_wga"}
    command, env, out = _cli_sweep(tmp_path, space, changes)
    once = {**env, "TUNE_GLOBAL_CHECKPOINT_S": "3600"}
    drill = _kill_mid_trial(command, once, out, tmp_path / "killed.log", checkpointed=2)
    assert "killed_after_s" in drill, (tmp_path / "killed.log").read_text()[-3000:]
    started = sorted(p.name for p in (out / "trials").iterdir())

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads((out / "sweep_summary.json").read_text())
    assert summary["resumed"] and not summary["interrupted"] and summary["failed"] == 0
    table = pd.read_csv(out / "trials.csv", dtype={"trial_id": str})
    assert len(table) == len(lrs) and sorted(table["train.lr"]) == lrs  # every point, once
    assert table["epochs"].max() == epochs  # the rungs' best went on to the last epoch
    assert summary["best_model"] is not None
    client, parents, children = _runs(out)
    assert len(parents) == 1 and len(children) == len(lrs)
    for child in children:
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "epochs_done")]
        assert len(steps) == len(set(steps)), f"an epoch reported twice: {steps}"
    adopted = {p.name: p.resolve().name for p in (out / "trials").iterdir() if p.is_symlink()}
    assert adopted and set(adopted.values()) <= set(started), (started, adopted)
    assert summary["unclaimed"] == [] and sorted(c.data.tags["trial_name"] for c in children) == sorted(
        f"trial_{t}" for t in table["trial_id"]
    )
    drill.update({"started": started, "adopted": adopted, "trial_epochs": int(table["epochs"].sum())})
    drill["statuses"] = sorted(table["status"])
    print("promotion sweep drill:", json.dumps(drill))


def test_the_relevance_space_trains_one_trial_per_map_and_keeps_the_better_on_val(
    ray_local, tmp_path: Path
) -> None:
    """``tune_spaces/cft_relevance.yaml``: rollout and AttnLRP's magnitude, chosen by val wga."""
    changes = {"run.select": "best_wga", "run.eval_every": 1, "train.params": "qk"}
    path = _config(tmp_path, Path("cft_relevance"), finetune=changes)
    summary = sweep.run(load_config(SweepConfig, path, [f"out={tmp_path / 'out'}"]))
    assert summary["trials"] == 2 and summary["failed"] == 0
    table = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert sorted(table["relevance"]) == ["attnlrp_abs", "rollout"]
    assert summary["best"]["val_wga"] == table["val_wga"].max()
    exported = load_config(FinetuneConfig, summary["best_config"])
    assert exported.relevance == summary["best"]["params"]["relevance"]
