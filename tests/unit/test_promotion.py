"""Promotion-based ASHA (workflows/sweep/promotion.py) driven the way Tune drives it, without Ray:
rung budgets, trials that wait at a rung, the top 1/eta promoted (ties broken by the second
metric), new trials only when nothing can be promoted, waiting trials stopped at the end."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from unspur.workflows.sweep.promotion import PromotionASHA, PromotionGate, rung_budgets


@pytest.mark.parametrize(
    ("grace", "eta", "max_t", "budgets"),
    [
        (1, 2, 8, [1, 2, 4, 8]),
        (1, 3, 8, [1, 3, 8]),
        (2, 2, 8, [2, 4, 8]),
        (1, 2, 6, [1, 2, 4, 6]),
        (4, 2, 4, [4]),
    ],
)
def test_rung_budgets(grace: int, eta: float, max_t: int, budgets: list[int]) -> None:
    assert rung_budgets(grace, eta, max_t) == budgets


@dataclass
class FakeTrial:
    trial_id: str
    point: dict
    status: str = "RUNNING"
    epochs: int = 0
    last_result: dict = field(default_factory=dict)


@dataclass
class FakeController:
    scheduler: PromotionASHA
    trials: list[FakeTrial] = field(default_factory=list)

    def get_trials(self) -> list[FakeTrial]:
        return self.trials

    def stop_trial(self, trial: FakeTrial) -> None:
        trial.status = "TERMINATED"
        self.scheduler.on_trial_remove(self, trial)


def _scheduler(concurrent: int, max_t: int) -> PromotionASHA:
    """Grace 1, halving, ranked by val_wga with val_acc breaking ties."""
    return PromotionASHA(
        time_attr="epochs_done",
        metric="val_wga",
        mode="max",
        max_t=max_t,
        grace_period=1,
        reduction_factor=2,
        max_concurrent=concurrent,
        tie_break="val_acc",
    )


def _sweep(curves: dict[str, list[tuple[float, float]]], concurrent: int, max_t: int) -> tuple[list, dict]:
    """Run the listed points (name -> per-epoch (val_wga, val_acc)) through scheduler and gate as
    Tune would: (the epoch log [(name, epochs done)], the final epochs per name)."""
    scheduler = _scheduler(concurrent, max_t)
    gate = PromotionGate([{"name": n} for n in curves], scheduler, "val_wga", "max")
    controller, log = FakeController(scheduler), []
    for _ in range(1000):
        while True:
            point = gate.suggest(f"t{len(controller.trials)}")
            if point is None or point == Searcher.FINISHED:
                break
            trial = FakeTrial(f"t{len(controller.trials)}", point)
            controller.trials.append(trial)
            scheduler.on_trial_add(controller, trial)
        chosen = scheduler.choose_trial_to_run(controller)
        if chosen is not None and chosen.status == "PAUSED":
            chosen.status = "RUNNING"
        running = [t for t in controller.trials if t.status == "RUNNING"]
        if not running and not any(t.status == "PAUSED" for t in controller.trials):
            break
        for trial in running:
            trial.epochs += 1
            log.append((trial.point["name"], trial.epochs))
            wga, acc = curves[trial.point["name"]][trial.epochs - 1]
            result = {"epochs_done": trial.epochs, "val_wga": wga, "val_acc": acc}
            action = scheduler.on_trial_result(controller, trial, result)
            if trial.epochs == max_t:
                trial.status = "TERMINATED"
                scheduler.on_trial_complete(controller, trial, result)
            elif action == TrialScheduler.PAUSE:
                trial.status = "PAUSED"
            else:
                assert action == TrialScheduler.CONTINUE
    else:
        pytest.fail("the sweep never ended")
    return log, {t.point["name"]: t.epochs for t in controller.trials}


def _flat(wga: float, acc: float = 0.9, epochs: int = 8) -> list[tuple[float, float]]:
    return [(wga, acc)] * epochs


def test_trials_wait_at_their_rung_and_the_best_half_goes_on() -> None:
    # 8 points whose quality is their index, best first: each rung keeps the top half of the trials
    # that finished it so far, so the sweep costs what synchronous successive halving does
    curves = {f"p{i}": _flat(0.1 * i) for i in reversed(range(8))}
    log, epochs = _sweep(curves, concurrent=2, max_t=8)
    assert epochs == {"p7": 8, "p6": 4, "p5": 2, "p4": 2, "p3": 1, "p2": 1, "p1": 1, "p0": 1}
    assert len(log) == 20  # of 64 for the full grid
    # no trial trains a second epoch before two trials have finished their first
    second = log.index(next(e for e in log if e[1] == 2))
    assert sum(1 for _, done in log[:second] if done == 1) >= 2


def test_the_first_trials_wait_for_others_to_be_compared_with() -> None:
    # worst first (the order that defeats the stopping variant, whose first trial runs to the end):
    # the first trial trains one epoch; promotions follow the rungs as they fill
    curves = {f"p{i}": _flat(0.1 * i) for i in range(8)}
    log, epochs = _sweep(curves, concurrent=2, max_t=8)
    assert log[:2] == [("p0", 1), ("p1", 1)] and epochs["p0"] == 1 and epochs["p7"] == 8
    # a promoted trial was in the top half of its rung when it went on: p1 after p0, p2 after p1...
    assert epochs == {"p0": 1, "p1": 2, "p2": 4, "p3": 8, "p4": 8, "p5": 8, "p6": 8, "p7": 8}


def test_ties_are_broken_by_the_second_metric() -> None:
    curves = {"a": _flat(0.5, 0.80), "b": _flat(0.5, 0.95), "c": _flat(0.2), "d": _flat(0.2)}
    _, epochs = _sweep(curves, concurrent=1, max_t=4)
    assert epochs == {"a": 2, "b": 4, "c": 1, "d": 1}


def test_a_late_bloomer_is_judged_at_each_rung_on_what_it_has_then() -> None:
    # "late" is the worst after 1 epoch, so it never gets the chance to bloom (ASHA's known bias);
    # with three points rung 2 holds one trial, and at the end the best of a rung still goes on
    late = [(0.1, 0.9), (0.9, 0.9), (0.9, 0.9), (0.9, 0.9)]
    curves = {"late": late, "steady": _flat(0.5, epochs=4), "other": _flat(0.4, epochs=4)}
    _, epochs = _sweep(curves, concurrent=1, max_t=4)
    assert epochs == {"late": 1, "steady": 4, "other": 1}


def test_a_restored_sweep_puts_its_trials_back_in_their_rungs() -> None:
    scheduler = _scheduler(concurrent=1, max_t=4)
    controller = FakeController(scheduler)
    ended = FakeTrial("a", {}, "TERMINATED", 4, {"epochs_done": 4, "val_wga": 0.5, "val_acc": 0.9})
    unfinished = FakeTrial("b", {}, "PENDING", 1, {"epochs_done": 1, "val_wga": 0.3, "val_acc": 0.9})
    for trial in (ended, unfinished):
        controller.trials.append(trial)
        scheduler.on_trial_add(controller, trial)
    assert not scheduler.wants_new_trial()  # the ended trial takes no slot; the unfinished one does
    # b resumes (Tune restarts it) into rung 2, where a (ended) ranks above it: b waits
    result = {"epochs_done": 2, "val_wga": 0.3, "val_acc": 0.9}
    assert scheduler.on_trial_result(controller, unfinished, result) == TrialScheduler.PAUSE
    unfinished.status = "PAUSED"
    scheduler.points_left = False
    assert scheduler.choose_trial_to_run(controller) is None and unfinished.status == "TERMINATED"


def test_full_ties_go_to_the_earlier_arrival_at_each_rung() -> None:
    # all points equal: a rung's ties go to the trial that finished that rung first (its arrival at
    # a later rung must not change its place at an earlier one), so the cost is successive halving's
    for concurrent in (1, 2):
        log, epochs = _sweep({f"p{i}": _flat(0.5) for i in range(8)}, concurrent, 8)
        assert epochs == {"p0": 8, "p1": 4, "p2": 2, "p3": 2, "p4": 1, "p5": 1, "p6": 1, "p7": 1}
        assert len(log) == 20
