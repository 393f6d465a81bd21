"""``unspur masks``: the job (:mod:`workflows.masks.job`) and its helpers."""

from workflows.masks.job import CONFIG, build, main, run

__all__ = ["CONFIG", "build", "main", "run"]
