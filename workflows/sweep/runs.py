"""Each trial of ``unspur sweep`` as one MLflow child run, also across a resumed sweep.

Ray's ``MLflowLoggerCallback`` keeps its trial -> run map in memory: a sweep restored after its
driver died would start a second child run for every trial that restarts, and leave the first one
behind. :class:`TrialRunLogger` is that callback, but a trial it has no run for reopens the child
run of the same parent tagged with its trial name (``trial_<trial id>``), and metrics are stepped by
``epochs_done`` (a restarted trial's Tune iteration count starts again at 1; the epochs it resumes
from its checkpoint do not).
"""

from __future__ import annotations

from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.result import TRAINING_ITERATION

__all__ = ["TrialRunLogger"]

PARENT_TAG = "mlflow.parentRunId"


class TrialRunLogger(MLflowLoggerCallback):
    """``MLflowLoggerCallback`` with one child run per trial of the parent run ``tags[PARENT_TAG]``."""

    def _client(self) -> Any:
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri)

    def earlier_run(self, trial_name: str) -> str | None:
        """The id of the child run an earlier driver of this sweep started for ``trial_name``."""
        parent = (self.tags or {}).get(PARENT_TAG)
        if parent is None:
            return None
        query = f"tags.`{PARENT_TAG}` = '{parent}' and tags.trial_name = '{trial_name}'"
        runs = self._client().search_runs(
            [self.mlflow_util.experiment_id],
            filter_string=query,
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        return runs[0].info.run_id if runs else None

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._trial_runs:
            run_id = self.earlier_run(str(trial))
            if run_id is not None:
                self._client().update_run(run_id, status="RUNNING")
                self._trial_runs[trial] = run_id
        super().log_trial_start(trial)

    def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
        step = int(result.get("epochs_done") or result[TRAINING_ITERATION])
        self.mlflow_util.log_metrics(run_id=self._trial_runs[trial], metrics_to_log=result, step=step)
