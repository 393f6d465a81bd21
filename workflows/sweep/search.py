"""A sweep's space as Ray Tune objects: the param space, the search algorithm and the scheduler.

A grid in given order is Tune's ``grid_search`` (Tune expands it); a shuffled grid and random draws
are listed points (``points_to_evaluate``), each fixing every param, over ``choice`` / range domains.
ASHA is Ray's stopping variant (:class:`EpochASHA`) or, with ``scheduler.variant: promotion``, ASHA as
published (:mod:`workflows.sweep.promotion`), which starts the listed points itself.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from unspur.training import SELECT_ORDER
from unspur.tune_spaces import SearchSpace
from unspur.workflows.sweep.promotion import PromotionASHA, PromotionGate

__all__ = ["EpochASHA", "param_space", "schedule", "search_alg", "tie_break"]


def _domain(param: Any, expand_grid: bool) -> Any:
    from ray import tune

    if param.type == "grid":
        return tune.grid_search(list(param.values)) if expand_grid else tune.choice(list(param.values))
    if param.type == "choice":
        return tune.choice(list(param.values))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[param.type](
        param.low, param.high
    )


def param_space(space: SearchSpace, expand_grid: bool) -> dict[str, Any]:
    """``{dotted key: Tune domain}``; a grid not expanded by Tune (shuffled: its points are listed)
    becomes a choice that every listed point fixes."""
    return {key: _domain(p, expand_grid) for key, p in space.params.items()}


def search_alg(
    space: SearchSpace, points: list[dict[str, Any]], expands_grid: bool, seed: int, max_concurrent: int
) -> Any:
    """Optuna (capped by a ConcurrencyLimiter), or Tune's variant generator over the grid (given
    order) / the listed ``points`` (random draws, a shuffled grid); it takes the cap itself: Tune
    ignores max_concurrent_trials for it."""
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if space.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
    return BasicVariantGenerator(
        points_to_evaluate=None if expands_grid else points, random_state=seed, max_concurrent=max_concurrent
    )


class EpochASHA(ASHAScheduler):
    """ASHA on epochs that never stops a trial at its last epoch: the trial ends by itself there,
    and a stop would kill its driver while it saves the final model."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == TrialScheduler.STOP and result.get(self._time_attr, 0) >= self._max_t:
            self._num_stopped -= 1
            return TrialScheduler.CONTINUE
        return action


def tie_break(metric: str) -> str | None:
    """The metric that breaks ties of ``metric`` the way ``run.select`` ranks epochs (SELECT_ORDER)."""
    head, _, name = metric.rpartition("_")
    order = SELECT_ORDER.get(f"best_{name}")
    return f"{head}_{order[1]}" if head and order else None


def schedule(
    space: SearchSpace,
    points: list[dict[str, Any]],
    expands_grid: bool,
    seed: int,
    max_concurrent: int,
    epochs: int,
) -> tuple[Any, Any]:
    """(search algorithm, scheduler) of a sweep whose trials train ``epochs`` epochs."""
    sched = space.scheduler
    if space.promotes:
        scheduler = PromotionASHA(
            time_attr="epochs_done",
            metric=space.metric,
            mode=space.mode,
            max_t=epochs,
            grace_period=sched.grace_period,
            reduction_factor=sched.reduction_factor,
            max_concurrent=max_concurrent,
            tie_break=tie_break(space.metric),
        )
        return PromotionGate(points, scheduler, space.metric, space.mode), scheduler
    search = search_alg(space, points, expands_grid, seed, max_concurrent)
    if sched.name == "fifo":
        return search, FIFOScheduler()
    asha = EpochASHA(
        time_attr="epochs_done",
        max_t=epochs,
        grace_period=sched.grace_period,
        reduction_factor=sched.reduction_factor,
    )
    return search, asha
