"""MLflow helpers: one tracking location per output folder, flattened config params, metrics.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<out>/mlflow.db`` (MLflow
3.x refuses file stores such as ``./mlruns``). Experiments created here keep their artifacts in
``<out>/mlartifacts``, not in the current directory. Nested runs (a sweep's trials, a pipeline's
stages) pass ``parent_run_id``.

Several jobs may share one sqlite file: MLflow creates (migrates) a new database on first use, and
four processes doing that at once left it broken (``table _alembic_tmp_tags already exists``: every
run of all four lost, measured). So the first touch of a sqlite store and the get-or-create of an
experiment run under an exclusive lock on ``<db>.lock`` (:func:`store_lock`, ``flock``: one
machine; on a shared cluster use a tracking server). See RELIABILITY.md for the measured figures.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel

from unspur.config import flatten

__all__ = [
    "MAX_PARAMS_PER_BATCH",
    "MAX_PARAM_VALUE_LENGTH",
    "log_artifact",
    "log_config",
    "log_dict",
    "log_figure",
    "log_metrics",
    "metric_items",
    "param_items",
    "start_run",
    "store_lock",
    "tracking_uri",
]

MAX_PARAMS_PER_BATCH = 100  # MLflow's limit of params per log_batch call
MAX_PARAM_VALUE_LENGTH = 6000  # MLflow's limit of a param value's length
_ENV = "MLFLOW_TRACKING_URI"
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")


def tracking_uri(out_dir: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<out_dir>/mlflow.db`` (absolute path)."""
    env = os.environ.get(_ENV)
    if env:
        return env
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{out / 'mlflow.db'}"


@contextmanager
def scoped_tracking_uri(default: str | None = None) -> Iterator[None]:
    """Inside: ``MLFLOW_TRACKING_URI`` is ``default`` unless already set; after: as it was before
    (a job run in-process, or MLflow's Ray callback, must not leave it set for the caller)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    if before is None and default is not None:
        os.environ["MLFLOW_TRACKING_URI"] = default
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def _set_uri(uri: str) -> None:
    """Point MLflow's fluent API at ``uri`` without leaving it in ``MLFLOW_TRACKING_URI``.

    (mlflow.set_tracking_uri also writes the environment variable, which would make the next
    :func:`tracking_uri` call take it for the user's choice.)
    """
    import mlflow

    before = os.environ.get(_ENV)
    mlflow.set_tracking_uri(uri)
    if before is None:
        os.environ.pop(_ENV, None)
    else:
        os.environ[_ENV] = before


def _artifact_root(uri: str) -> Path | None:
    """Artifacts of a local sqlite store live beside the database (``<db folder>/mlartifacts``), not
    in the current directory; a tracking server keeps its own artifact root (None)."""
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :]).parent / "mlartifacts" if uri.startswith(prefix) else None


@contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Inside: this process alone, among those on this machine that use the same lock, creates or
    migrates the sqlite store at ``uri`` and creates experiments in it (an exclusive ``flock`` on
    ``<db>.lock``). Nothing for other stores: a tracking server serialises its own writes."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix):
        yield
        return
    import fcntl

    database = Path(uri[len(prefix) :])
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _experiment_id(name: str, artifacts: Path | None) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifacts.resolve().as_uri() if artifacts is not None else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # another job created it first (a tracking server takes no file lock)
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextmanager
def start_run(
    out_dir: str | Path,
    experiment: str = "unspur",
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Point MLflow at :func:`tracking_uri` and open a run of ``experiment`` (yields the ActiveRun).

    ``parent_run_id`` makes it a child run (tag ``mlflow.parentRunId``); a run started while
    another one is active in this process is nested under it.
    """
    import mlflow

    uri = tracking_uri(out_dir)
    _set_uri(uri)
    with store_lock(uri):  # the store's first use migrates it; experiments are created once
        experiment_id = _experiment_id(experiment, _artifact_root(uri))
    nested = mlflow.active_run() is not None
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        nested=nested,
        parent_run_id=parent_run_id,
        tags={k: str(v) for k, v in (tags or {}).items()},
    ) as run:
        yield run


def _key(name: str) -> str:
    return _BAD_KEY_CHARS.sub("_", name)


def param_items(cfg: BaseModel | Mapping[str, Any]) -> dict[str, str]:
    """Flattened config -> MLflow params: dotted keys, values as text cut to MLflow's length limit."""
    flat = flatten(cfg if isinstance(cfg, BaseModel) else dict(cfg))
    out: dict[str, str] = {}
    for key, value in flat.items():
        text = "None" if value is None else str(value)
        if len(text) > MAX_PARAM_VALUE_LENGTH:
            text = text[: MAX_PARAM_VALUE_LENGTH - 3] + "..."
        out[_key(key)] = text
    return out


def log_config(cfg: BaseModel | Mapping[str, Any], artifact_file: str = "config.yaml") -> dict[str, str]:
    """Log the config as flattened params (in batches MLflow accepts) and as a YAML artifact."""
    import mlflow

    params = param_items(cfg)
    items = list(params.items())
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        mlflow.log_params(dict(items[start : start + MAX_PARAMS_PER_BATCH]))
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else dict(cfg)
    mlflow.log_text(yaml.safe_dump(data, sort_keys=False), artifact_file)
    return params


def metric_items(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metrics -> ``{"per_group.bird/water": 0.9, ...}``: numbers only (bools as 0/1).

    Strings and None are skipped; keys are made MLflow-safe (other characters become ``_``).
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(metric_items(value, name + "."))
        elif isinstance(value, (numbers.Real, np.bool_)):
            out[_key(name)] = float(value)
    return out


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> dict[str, float]:
    """Log (nested) numeric metrics to the active run; NaN values are logged as NaN."""
    import mlflow

    items = metric_items(metrics)
    if items:
        mlflow.log_metrics(
            {k: (v if not math.isinf(v) else math.copysign(1e308, v)) for k, v in items.items()}, step=step
        )
    return items


def log_figure(figure: Any, artifact_file: str) -> None:
    """Log a matplotlib figure (e.g. ``"figures/relevance.png"``) to the active run."""
    import mlflow

    mlflow.log_figure(figure, artifact_file)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a local file (e.g. a report) to the active run."""
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Log a dict as a JSON (``.json``) or YAML (``.yaml``) artifact of the active run."""
    import mlflow

    mlflow.log_dict(dict(data), artifact_file)
