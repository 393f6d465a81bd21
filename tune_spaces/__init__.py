"""Search spaces for loss-weight sweeps, as YAML data, and a small validating loader.

A space file (e.g. ``tune_spaces/cft.yaml``)::

    method: cft                 # which finetune loss the space is for
    search: random              # grid | random | optuna
    order: null                 # grid only: given | shuffled (null: shuffled under ASHA, else given)
    metric: val_wga             # reported by the finetune job; validation, never test
    mode: max
    scheduler: {name: asha, variant: stopping, grace_period: 1, reduction_factor: 2}
    params:
      loss.lambda_concept: {type: loguniform, low: 0.1, high: 2.0}
      relevance: {type: choice, values: [rollout]}

Keys of ``params`` are dotted paths into the training config; every sampled point is
validated against that config before a trial starts (:func:`validate_point`).
Pure Python: the conversion to Ray Tune objects lives in ``workflows/sweep/job.py``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from unspur.config import (
    ConfigError,
    StrictModel,
    apply_overrides,
    load_config,
    parse_overrides,
    validate_config,
)

__all__ = [
    "SearchSpace",
    "Param",
    "load_space",
    "validate_point",
    "sample_point",
    "grid_points",
    "SPACES_DIR",
]

SPACES_DIR = Path(__file__).parent


class _Range(StrictModel):
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"impossible range: low {self.low} must be < high {self.high}")
        return self


class Uniform(_Range):
    type: Literal["uniform"]


class LogUniform(_Range):
    type: Literal["loguniform"]

    @model_validator(mode="after")
    def _positive(self):
        if self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self


class RandInt(StrictModel):
    type: Literal["randint"]
    low: int
    high: int  # exclusive

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"impossible range: low {self.low} must be < high {self.high} (exclusive)")
        return self


class Choice(StrictModel):
    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


class Grid(StrictModel):
    type: Literal["grid"]
    values: list[Any] = Field(min_length=1)


Param = Annotated[Uniform | LogUniform | RandInt | Choice | Grid, Field(discriminator="type")]


class Scheduler(StrictModel):
    """``variant`` (asha): ``stopping`` (Ray's ASHAScheduler: a trial runs on unless it falls below a
    rung's cut-off among the trials that reached the rung before it) or ``promotion`` (ASHA as
    published: a trial waits at each rung and the top ``1/reduction_factor`` of a rung go on; needs
    the points listed ahead, so search grid or random)."""

    name: Literal["fifo", "asha"] = "asha"
    variant: Literal["stopping", "promotion"] = "stopping"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class SearchSpace(StrictModel):
    """A sweep's space. ``order`` (grid only): the order the grid's points start in, ``given`` (the
    cartesian product in key order) or ``shuffled`` (seeded by the sweep's seed). Unset: shuffled
    under ASHA, given otherwise. ASHA judges a trial at a rung against the trials that reached the
    rung before it, so a grid listed in order of quality (ascending learning rates that each beat
    the last) stops nothing and costs what the full grid does; ASHA's savings assume trials arrive
    in no particular order."""

    method: str
    search: Literal["grid", "random", "optuna"] = "random"
    order: Literal["given", "shuffled"] | None = None
    metric: str = "val_wga"
    mode: Literal["max", "min"] = "max"
    scheduler: Scheduler = Scheduler()
    params: dict[str, Param] = Field(min_length=1)

    @model_validator(mode="after")
    def _grid_consistency(self):
        grids = [k for k, p in self.params.items() if isinstance(p, Grid)]
        if self.search == "grid" and len(grids) != len(self.params):
            others = sorted(set(self.params) - set(grids))
            raise ValueError(f"search: grid needs every param of type grid; not grid: {others}")
        if self.search != "grid" and grids:
            raise ValueError(f"params {grids} are of type grid but search is {self.search!r}; use choice")
        if self.search != "grid" and self.order is not None:
            raise ValueError(f"order applies to search: grid, not {self.search!r}; remove it")
        if self.scheduler.variant == "promotion" and self.search == "optuna":
            raise ValueError(
                "scheduler.variant promotion starts trials from points listed ahead; use search "
                "grid or random, or scheduler.variant stopping with optuna"
            )
        if self.metric.startswith("test"):
            raise ValueError(f"metric {self.metric!r} selects on test data; use a validation metric (val_*)")
        return self

    @property
    def grid_order(self) -> str | None:
        """``given`` or ``shuffled`` for a grid (resolving an unset ``order``), None otherwise."""
        if self.search != "grid":
            return None
        return self.order or ("shuffled" if self.scheduler.name == "asha" else "given")

    @property
    def promotes(self) -> bool:
        """ASHA as published (trials wait at rungs; :mod:`workflows.sweep.promotion`)."""
        return self.scheduler.name == "asha" and self.scheduler.variant == "promotion"


def load_space(path: str | Path, overrides: list[str] | None = None) -> SearchSpace:
    """Load and validate a space YAML (a bare name like ``cft`` means ``tune_spaces/cft.yaml``)."""
    path = Path(path)
    if not path.suffix and not path.exists():
        path = SPACES_DIR / f"{path}.yaml"
    return load_config(SearchSpace, path, overrides)


def _paths(cfg: BaseModel, prefix: str = "") -> set[str]:
    """Dotted keys of ``cfg``'s values (a section chosen by name, e.g. ``loss``, gives its own keys)."""
    out: set[str] = set()
    for name in [*type(cfg).model_fields, *(cfg.model_extra or {})]:
        value = getattr(cfg, name, None)
        if isinstance(value, BaseModel):
            out |= _paths(value, f"{prefix}{name}.")
        else:
            out.add(f"{prefix}{name}")
    return out


def validate_point(base: BaseModel, point: dict[str, Any], source: str = "sampled point") -> BaseModel:
    """Apply a ``{dotted.key: value}`` point to ``base`` and validate the result strictly.

    Raises :class:`ConfigError` naming an unknown parameter or a value the config rejects.
    """
    known = _paths(base)
    unknown = sorted(k for k in point if k not in known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown parameter(s) {unknown} for {type(base).__name__}; "
            f"tunable keys include: {', '.join(sorted(known))}"
        )
    items = [f"{k}={_yaml_scalar(v)}" for k, v in point.items()]
    data = apply_overrides(base.model_dump(mode="json"), parse_overrides(items))
    return validate_config(type(base), data, f"{source} {point}")


def _yaml_scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def sample_point(space: SearchSpace, rng: random.Random) -> dict[str, Any]:
    """Draw one point (used to validate a space before any trial starts, and by tests)."""
    point: dict[str, Any] = {}
    for key, p in space.params.items():
        if isinstance(p, Uniform):
            point[key] = rng.uniform(p.low, p.high)
        elif isinstance(p, LogUniform):
            point[key] = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
        elif isinstance(p, RandInt):
            point[key] = rng.randrange(p.low, p.high)
        else:
            point[key] = rng.choice(p.values)
    return point


def grid_points(space: SearchSpace) -> list[dict[str, Any]]:
    """Every point of a grid space (cartesian product, in key order)."""
    points: list[dict[str, Any]] = [{}]
    for key, p in space.params.items():
        values = p.values if isinstance(p, (Grid, Choice)) else None
        if values is None:
            raise ConfigError(f"param {key} is not a grid; grid_points needs grid/choice params")
        points = [{**pt, key: v} for pt in points for v in values]
    return points
