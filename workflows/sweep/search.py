"""A sweep's space as Ray Tune objects: the param space and the search algorithm.

A grid in given order is Tune's ``grid_search`` (Tune expands it); a shuffled grid and random draws
are listed points (``points_to_evaluate``), each fixing every param, over ``choice`` / range domains.
"""

from __future__ import annotations

from typing import Any

from unspur.tune_spaces import SearchSpace

__all__ = ["param_space", "search_alg"]


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
