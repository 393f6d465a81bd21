"""Trials a killed sweep driver started after Tune's last experiment checkpoint, and their adoption.

Tune saves a sweep's state every so often. A trial the driver started after the last save is
unknown to the restored sweep: its searcher suggests the trial's point again, under a new trial id.
Left alone, the new trial would train that point from scratch in a new folder and MLflow would
keep two child runs for it, the first one KILLED with a partial report.

:class:`Orphans` (a Tune callback, in the driver) prevents that. When a trial starts, its folder
``trials/<trial id>/`` gets the trial's point (``point.json``). When a trial of a restored sweep has
no folder yet and a folder of the same point belongs to no trial the sweep knows (an orphan),
``trials/<trial id>`` becomes a link to the orphan's folder. The trial then resumes from the
orphan's checkpoints, and :class:`~unspur.workflows.sweep.runs.TrialRunLogger` reopens the orphan's child
run (:meth:`Orphans.folder_of`). So a point keeps one folder of work and one child run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

__all__ = ["POINT", "Orphans", "point_key", "unclaimed"]

POINT = "point.json"


def point_key(config: Mapping[str, Any]) -> str:
    """The trial's point as a canonical string: what ``point.json`` holds."""
    return json.dumps(dict(config), sort_keys=True, default=str)


class Orphans(Callback):
    """Writes each trial's point into ``trials/<id>/`` and links a restored point to its orphan."""

    def __init__(self, trials: str | Path) -> None:
        self.trials = Path(trials)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        folder = self.trials / trial.trial_id
        if not folder.exists():
            orphan = self._orphan(point_key(trial.config), {t.trial_id for t in trials})
            if orphan is not None:
                folder.symlink_to(orphan, target_is_directory=True)
                print(f"trial {trial.trial_id} resumes trial {orphan}'s work on the same point", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / POINT).is_file():
            (folder / POINT).write_text(point_key(trial.config))

    def _orphan(self, key: str, known: set[str]) -> str | None:
        if not self.trials.is_dir():
            return None
        taken = _linked(self.trials, known)  # the trials started here are known too
        for path in sorted(self.trials.iterdir()):
            if path.is_symlink() or path.name in known or path.name in taken:
                continue
            point = path / POINT
            if point.is_file() and point.read_text() == key:
                return path.name
        return None

    def folder_of(self, trial_id: str) -> str:
        """The folder name a trial's work lives in: its own id, or the orphan it links to."""
        return (self.trials / trial_id).resolve().name


def unclaimed(trials: Path, ids: Iterable[str]) -> list[str]:
    """Folders under ``trials`` that no trial of the sweep (``ids``) owns or links to: orphans whose
    point the restored sweep never ran again (a searcher that suggests new points)."""
    if not trials.is_dir():
        return []
    owned = set(ids)
    owned |= _linked(trials, owned)
    return sorted(
        p.name for p in trials.iterdir() if p.is_dir() and not p.is_symlink() and p.name not in owned
    )


def _linked(trials: Path, ids: set[str]) -> set[str]:
    """The orphan folders that the trials ``ids`` link to."""
    return {p.resolve().name for p in trials.iterdir() if p.is_symlink() and p.name in ids}
