"""``unspur sweep``: the job (:mod:`workflows.sweep.job`) and its helpers."""

from workflows.sweep.job import CONFIG, build, main, run

__all__ = ["CONFIG", "build", "main", "run"]
