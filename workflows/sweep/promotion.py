"""ASHA as published: trials wait at a rung and the best of each rung are promoted.

Li et al. 2020 ("A System for Massively Parallel Hyperparameter Tuning", Algorithm 2): a trial runs
to its rung's budget (``grace_period * reduction_factor**k`` epochs, then ``max_t``) and waits there.
When a slot is free, the waiting trial ranked in the top ``1 / reduction_factor`` of the trials that
finished the highest possible rung is promoted to the next rung; when none is, a new trial starts.
So no trial trains past the first rung before others can be compared with it, and which trials go
further does not depend on which arrive first. Ray's ``ASHAScheduler`` is the stopping variant: a
trial runs on unless it is below a rung's cut-off among the trials that reached the rung before it,
so the first trials of a sweep run to the end (``scheduler.variant: stopping``).

Tune pauses a waiting trial (its actor ends) and restarts it when promoted; the trial resumes from
its own last checkpoint. Trials are ranked by the metric, ties broken by ``tie_break`` (the way
``run.select`` ranks epochs: worst-group accuracy, then average accuracy). New trials come from
:class:`PromotionGate`, a searcher over the listed points that starts one only when the scheduler
has a slot and no trial to promote. When every point has started and no trial runs or can be
promoted, the waiting trials are stopped: they leave the model of their best epoch so far.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

__all__ = ["PromotionASHA", "PromotionGate", "rung_budgets"]


def rung_budgets(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """Epochs a trial may train to at each rung: ``grace * rf**k`` below ``max_t``, then ``max_t``."""
    budgets, budget = [], float(grace_period)
    while round(budget) < max_t:
        if not budgets or round(budget) > budgets[-1]:
            budgets.append(round(budget))
        budget *= reduction_factor
    return [*budgets, max_t]


class PromotionASHA(FIFOScheduler):
    """Promotion-based ASHA over ``time_attr`` (epochs), at most ``max_concurrent`` trials at once."""

    def __init__(
        self,
        *,
        time_attr: str,
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        max_concurrent: int,
        tie_break: str | None = None,
    ) -> None:
        super().__init__()
        self._time_attr, self._metric, self._mode, self._tie_break = time_attr, metric, mode, tie_break
        self._eta, self._max_concurrent = reduction_factor, max(1, max_concurrent)
        self._budgets = rung_budgets(grace_period, reduction_factor, max_t)
        self._rungs: list[dict[str, tuple[float, ...]]] = [{} for _ in self._budgets]
        self._arrival: list[dict[str, int]] = [{} for _ in self._budgets]  # when each finished a rung
        self._promoted: list[set[str]] = [set() for _ in self._budgets]
        self._rung_of: dict[str, int] = {}  # the rung a live trial is training towards
        self._waiting: dict[str, Any] = {}  # trial id -> paused trial
        self._ended: set[str] = set()
        self._started: set[str] = set()  # trial ids suggested or added
        self._clock = 0
        self.points_left = True  # set by PromotionGate once every point has started

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    # --- bookkeeping ------------------------------------------------------------------------------

    def _score(self, result: dict[str, Any]) -> tuple[float, ...]:
        sign = 1.0 if self._mode == "max" else -1.0
        keys = [self._metric] + ([self._tie_break] if self._tie_break else [])
        return tuple(sign * float(result.get(key, float("-inf") * sign)) for key in keys)

    def _active(self) -> int:
        """Trials started or starting, not waiting and not ended."""
        return len(self._started - set(self._waiting) - self._ended)

    def _promotable(self) -> str | None:
        """The waiting trial to promote now: highest rung first, best score, earlier arrival first.
        Once no trial runs and no new one can start, a rung's best always goes on (a rung with
        fewer than ``reduction_factor`` trials would otherwise end the sweep's best trial there)."""
        final = not self.points_left and self._active() == 0
        for k in reversed(range(len(self._budgets) - 1)):
            rung = self._rungs[k]
            top = sorted(rung, key=lambda t: (rung[t], -self._arrival[k][t]), reverse=True)
            count = int(len(rung) // self._eta)
            for trial_id in top[: max(count, 1) if final else count]:
                if trial_id not in self._promoted[k] and trial_id not in self._ended:
                    return trial_id
        return None

    def wants_new_trial(self) -> bool:
        """Whether a slot is free and no waiting trial is due a promotion (asked by the gate)."""
        return self._active() < self._max_concurrent and self._promotable() is None

    def expect(self, trial_id: str) -> None:
        """A trial the gate has just suggested: it takes a slot before Tune adds it."""
        self._started.add(trial_id)

    # --- Tune's calls -----------------------------------------------------------------------------

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        """A new trial, or one of a restored sweep: its last report puts it back in the rungs it
        passed (ranked by that score; Tune restarts every unfinished trial of a restored sweep, so
        each goes on from its checkpoint) and an ended one takes no slot."""
        self._started.add(trial.trial_id)
        self._rung_of.setdefault(trial.trial_id, 0)
        last = getattr(trial, "last_result", None) or {}
        done = int(last.get(self._time_attr, 0) or 0)
        passed = [k for k, budget in enumerate(self._budgets[:-1]) if budget <= done]
        for k in passed:
            self._rungs[k][trial.trial_id] = self._score(last)
            self._clock += 1
            self._arrival[k][trial.trial_id] = self._clock
            self._promoted[k].add(trial.trial_id)  # a restored trial goes on (Tune restarts it)
        if passed:
            self._rung_of[trial.trial_id] = min(passed[-1] + 1, len(self._budgets) - 1)
        if trial.status in ("TERMINATED", "ERROR"):
            self._ended.add(trial.trial_id)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        trial_id, done = trial.trial_id, int(result.get(self._time_attr, 0))
        k = self._rung_of[trial_id]
        while k + 1 < len(self._budgets) and done >= self._budgets[k + 1]:
            k += 1  # resumed past its rung (a restored sweep)
        self._rung_of[trial_id] = k
        if done < self._budgets[k] or k == len(self._budgets) - 1:
            return TrialScheduler.CONTINUE  # still training towards the rung, or the last rung
        self._rungs[k][trial_id] = self._score(result)
        self._clock += 1
        self._arrival[k][trial_id] = self._clock
        if self._promotable() == trial_id:
            self._promote(trial_id, k)
            return TrialScheduler.CONTINUE
        self._waiting[trial_id] = trial
        return TrialScheduler.PAUSE

    def _promote(self, trial_id: str, k: int) -> None:
        self._promoted[k].add(trial_id)
        self._rung_of[trial_id] = k + 1
        self._waiting.pop(trial_id, None)

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        for trial in tune_controller.get_trials():
            if trial.status == "PENDING":
                return trial
        if self._active() >= self._max_concurrent:
            return None
        promote = self._promotable()
        if promote is not None and self._waiting.get(promote) is not None:
            trial = self._waiting[promote]
            if trial.status == "PAUSED":
                self._promote(promote, self._rung_of[promote])
                return trial
            return None  # still saving on its way to PAUSED
        if promote is None and not self.points_left and self._active() == 0:
            for trial in list(self._waiting.values()):
                if trial.status == "PAUSED":
                    tune_controller.stop_trial(trial)  # nothing left to compare it with: it ends here
        return None

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        self._end(trial)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._end(trial)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._end(trial)

    def _end(self, trial: Any) -> None:
        self._ended.add(trial.trial_id)
        self._waiting.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        rungs = ", ".join(f"{b} epochs: {len(r)}" for b, r in zip(self._budgets, self._rungs, strict=True))
        return f"PromotionASHA: {len(self._waiting)} waiting; finished per rung: {rungs}"


class PromotionGate(Searcher):
    """The listed points, one new trial whenever :class:`PromotionASHA` has a slot and nothing to promote."""

    def __init__(
        self, points: list[dict[str, Any]], scheduler: PromotionASHA, metric: str, mode: str
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.points, self.scheduler, self.next = list(points), scheduler, 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Accept Tune's param space: every listed point fixes each of its params."""
        self._metric, self._mode = metric or self._metric, mode or self._mode
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.next >= len(self.points):
            self.scheduler.points_left = False
            return Searcher.FINISHED
        if not self.scheduler.wants_new_trial():
            return None
        self.next += 1
        self.scheduler.expect(trial_id)
        self.scheduler.points_left = self.next < len(self.points)
        return dict(self.points[self.next - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"next": self.next}))

    def restore(self, checkpoint_path: str) -> None:
        self.next = json.loads(Path(checkpoint_path).read_text())["next"]
