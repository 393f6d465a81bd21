"""``unspur evaluate``: the job (:mod:`workflows.evaluate.job`) and its helpers."""

from workflows.evaluate.job import CONFIG, build, main, run

__all__ = ["CONFIG", "build", "main", "run"]
