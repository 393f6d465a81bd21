"""A trial a killed sweep driver started after Tune's last save: the restored sweep's trial of the
same point adopts its folder and its MLflow child run (unspur/workflows/sweep/orphans.py, runs.py)."""

from __future__ import annotations

import json
from pathlib import Path

from unspur.workflows.sweep.orphans import POINT, Orphans, point_key, unclaimed


class _Trial:
    """What the callbacks read of a Tune trial: its id, name and config."""

    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config = trial_id, config

    def __str__(self) -> str:
        return f"trial_{self.trial_id}"


def _started(trials: Path, trial: _Trial, known: list[_Trial], orphans: Orphans | None = None) -> Orphans:
    orphans = orphans or Orphans(trials)
    orphans.on_trial_start(iteration=0, trials=[*known, trial], trial=trial)
    return orphans


def _killed_driver(trials: Path) -> tuple[_Trial, _Trial]:
    """A first driver started trial a (lr 0.1, saved by Tune) and trial b (lr 0.2, started after
    Tune's last save, one checkpoint on disk), then died."""
    a, b = _Trial("a", {"train.lr": 0.1}), _Trial("b", {"train.lr": 0.2})
    orphans = _started(trials, a, [])
    _started(trials, b, [a], orphans)
    (trials / "b" / "checkpoints").mkdir()
    (trials / "b" / "checkpoints" / "epoch_0").write_text("weights")
    return a, b


def test_every_trial_folder_holds_its_point_and_a_fresh_sweep_adopts_nothing(tmp_path: Path) -> None:
    trials = tmp_path / "trials"
    a, b = _killed_driver(trials)
    for trial in (a, b):
        folder = trials / trial.trial_id
        assert folder.is_dir() and not folder.is_symlink()
        assert json.loads((folder / POINT).read_text()) == trial.config


def test_the_restored_trial_of_an_orphans_point_resumes_in_its_folder(tmp_path: Path) -> None:
    trials = tmp_path / "trials"
    a, _ = _killed_driver(trials)
    restored = Orphans(trials)  # the restored driver knows only trial a
    c, d, e = _Trial("c", {"train.lr": 0.2}), _Trial("d", {"train.lr": 0.3}), _Trial("e", {"train.lr": 0.2})
    _started(trials, c, [a], restored)
    assert (trials / "c").is_symlink() and (trials / "c").resolve() == (trials / "b").resolve()
    assert (trials / "c" / "checkpoints" / "epoch_0").read_text() == "weights"
    assert restored.folder_of("c") == "b" and restored.folder_of("a") == "a"
    _started(trials, d, [a, c], restored)  # another point: a folder of its own
    _started(trials, e, [a, c, d], restored)  # the same point again: b is taken by c
    assert not (trials / "d").is_symlink() and not (trials / "e").is_symlink()
    assert unclaimed(trials, ["a", "c", "d", "e"]) == []
    assert unclaimed(trials, ["a", "d", "e"]) == ["b"]  # had c never started, b would be left


def test_a_known_trial_is_never_adopted_and_an_orphaned_link_frees_its_folder(tmp_path: Path) -> None:
    trials = tmp_path / "trials"
    a, _ = _killed_driver(trials)
    same_as_a = _Trial("f", {"train.lr": 0.1})
    _started(trials, same_as_a, [a])  # a is the sweep's own trial (e.g. two samples of one point)
    assert not (trials / "f").is_symlink()
    # a second restore: trial c had adopted b, then that driver died before Tune saved c too
    c = _Trial("c", {"train.lr": 0.2})
    _started(trials, c, [a])
    g = _Trial("g", {"train.lr": 0.2})
    _started(trials, g, [a, same_as_a])
    assert (trials / "g").resolve() == (trials / "b").resolve()


def test_the_adopting_trial_reopens_the_orphans_child_run(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from unspur.workflows.sweep.runs import TrialRunLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    parent = client.create_run(client.create_experiment("sweep")).info.run_id
    tags = {"mlflow.parentRunId": parent, "job": "sweep_trial"}
    trials = tmp_path / "trials"
    a, b = _Trial("a", {"train.lr": 0.1}), _Trial("b", {"train.lr": 0.2})
    first_orphans = Orphans(trials)
    first = TrialRunLogger(tracking_uri=uri, experiment_name="sweep", tags=tags, orphans=first_orphans)
    first.setup()
    for trial, known in ((a, []), (b, [a])):
        first_orphans.on_trial_start(iteration=0, trials=[*known, trial], trial=trial)
        first.log_trial_start(trial)
        first.log_trial_result(1, trial, {"val_wga": 0.5, "epochs_done": 1, "training_iteration": 1})

    orphans = Orphans(trials)  # the restored driver: it knows a, and runs b's point as c
    again = TrialRunLogger(tracking_uri=uri, experiment_name="sweep", tags=tags, orphans=orphans)
    again.setup()
    c = _Trial("c", {"train.lr": 0.2})
    for trial, known in ((a, [a]), (c, [a])):
        orphans.on_trial_start(iteration=0, trials=[*known, trial], trial=trial)
        again.log_trial_start(trial)
        again.log_trial_result(1, trial, {"val_wga": 0.6, "epochs_done": 2, "training_iteration": 1})
        again.log_trial_end(trial)
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    children = {r.data.tags["trial_name"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == ["trial_a", "trial_c"]  # b's run became c's: one run per point
    run_c = children["trial_c"]
    assert run_c.data.tags["adopted_from"] == "trial_b" and run_c.data.tags["trial_folder"] == "b"
    assert run_c.info.run_name == "trial_c" and run_c.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run_c.info.run_id, "val_wga")] == [1, 2]
    assert point_key(c.config) == (trials / "c" / POINT).read_text()
