"""Each trial of ``unspur sweep`` as one MLflow child run, also across a resumed sweep.

Ray's ``MLflowLoggerCallback`` keeps its trial -> run map in memory: a sweep restored after its
driver died would start a second child run for every trial that restarts, and leave the first one
behind. :class:`TrialRunLogger` is that callback, but a trial it has no run for reopens the child
run of the same parent tagged with its trial name (``trial_<trial id>``), and metrics are stepped by
``epochs_done`` (a restarted trial's Tune iteration count starts again at 1; the epochs it resumes
from its checkpoint do not). A trial that adopts an orphan's work (:mod:`unspur.workflows.sweep.orphans`)
reopens the orphan's run, renamed after it (tag ``adopted_from``: the orphan's trial name); every
run is tagged ``trial_folder``, the folder its trial's work lives in.
"""

from __future__ import annotations

from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import TRAINING_ITERATION

from unspur.workflows.sweep.orphans import Orphans

__all__ = ["TrialRunLogger"]

PARENT_TAG = "mlflow.parentRunId"


class TrialRunLogger(MLflowLoggerCallback):
    """``MLflowLoggerCallback`` with one child run per trial of the parent run ``tags[PARENT_TAG]``;
    ``orphans``: the sweep's :class:`Orphans` callback (the folder a trial's work lives in)."""

    def __init__(self, *args: Any, orphans: Orphans | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.orphans = orphans

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def earlier_run(self, value: str, tag: str = "trial_name") -> str | None:
        """The id of the child run an earlier driver of this sweep started with ``tag`` = ``value``."""
        parent = (self.tags or {}).get(PARENT_TAG)
        if parent is None:
            return None
        query = f"tags.`{PARENT_TAG}` = '{parent}' and tags.{tag} = '{value}'"
        runs = self._client().search_runs(
            [self.mlflow_util.experiment_id],
            filter_string=query,
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def log_trial_start(self, trial: Any) -> None:
        folder = self.orphans.folder_of(trial.trial_id) if self.orphans else trial.trial_id
        if trial not in self._trial_runs:
            run_id = self.earlier_run(str(trial))
            if run_id is None and folder != trial.trial_id:
                run_id = self._adopt(trial, folder)
            if run_id is not None:
                self._client().update_run(run_id, status="RUNNING")
                self._trial_runs[trial] = run_id
        super().log_trial_start(trial)
        self._client().set_tag(self._trial_runs[trial], "trial_folder", folder)

    def _adopt(self, trial: Any, folder: str) -> str | None:
        """The orphan's child run, renamed after ``trial`` (None if the orphan has none)."""
        run_id = self.earlier_run(folder, "trial_folder") or self.earlier_run(f"trial_{folder}")
        if run_id is not None:
            client = self._client()
            old = client.get_run(run_id).data.tags.get("trial_name", "")
            for key, value in (
                ("adopted_from", old),
                ("trial_name", str(trial)),
                ("mlflow.runName", str(trial)),
            ):
                client.set_tag(run_id, key, value)
        return run_id

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        step = int(result.get("epochs_done") or result[TRAINING_ITERATION])
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=result, step=step)
