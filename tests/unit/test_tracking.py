"""MLflow helpers against a throw-away sqlite store."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unspur import tracking
from unspur.config import StrictModel


class _Inner(StrictModel):
    lr: float = 1e-4
    names: list[str] = ["a", "b"]


class _Cfg(StrictModel):
    out: str = "x"
    train: _Inner = _Inner()
    extra: dict[str, int] = {f"k{i}": i for i in range(150)}  # > 100 params: needs chunking
    note: str = "z" * 7000  # longer than MLflow's param limit


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its tables takes seconds)."""
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_tracking_uri_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path / "o") == f"sqlite:///{(tmp_path / 'o').resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert tracking.tracking_uri(tmp_path) == "http://tracking:5000"


def test_metric_items_flatten_and_filter():
    items = tracking.metric_items(
        {
            "acc": np.float32(0.5),
            "per_group": {"bird/water": 1, "a|b": 0.25},
            "worst_group": "bird/water",
            "ok": True,
            "n": np.int64(3),
            "x": None,
        }
    )
    assert items == {"acc": 0.5, "per_group.bird/water": 1.0, "per_group.a_b": 0.25, "ok": 1.0, "n": 3.0}


def test_runs_params_metrics_artifacts(store):
    import os

    import mlflow

    tmp_path = store
    with tracking.start_run(tmp_path, experiment="t", run_name="parent") as parent:
        params = tracking.log_config(_Cfg())
        tracking.log_metrics({"acc": 0.75, "per_group": {"a/b": 0.5}, "wga": float("nan")}, step=2)
        tracking.log_dict({"a": 1}, "result.json")
        with tracking.start_run(tmp_path, experiment="t", run_name="child") as child:
            tracking.log_metrics({"acc": 0.1})
    with tracking.start_run(tmp_path, experiment="t", parent_run_id=parent.info.run_id) as other:
        pass
    assert len(params) == 154 and params["train.lr"] == "0.0001" and params["train.names"] == "['a', 'b']"
    assert len(params["note"]) == tracking.MAX_PARAM_VALUE_LENGTH
    client = mlflow.MlflowClient(tracking.tracking_uri(tmp_path))
    run = client.get_run(parent.info.run_id)
    assert run.data.params["extra.k149"] == "149" and len(run.data.params) == 154
    assert run.data.metrics["acc"] == 0.75 and run.data.metrics["per_group.a/b"] == 0.5
    assert math.isnan(run.data.metrics["wga"])
    assert client.get_metric_history(parent.info.run_id, "acc")[0].step == 2
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "result.json"} <= artifacts
    assert run.info.artifact_uri.startswith((tmp_path.resolve() / "mlartifacts").as_uri())
    for r in (child, other):
        assert client.get_run(r.info.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert mlflow.active_run() is None
    assert "MLFLOW_TRACKING_URI" not in os.environ  # the default store is not mistaken for the user's


def test_log_figure(store):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mlflow

    tmp_path = store
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    with tracking.start_run(tmp_path, experiment="fig") as run:
        tracking.log_figure(fig, "figures/line.png")
    plt.close(fig)
    client = mlflow.MlflowClient(tracking.tracking_uri(tmp_path))
    assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/line.png"]
