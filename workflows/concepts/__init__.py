"""``unspur concepts``: the job (:mod:`workflows.concepts.job`) and its helpers."""

from workflows.concepts.job import CONFIG, build, main, run

__all__ = ["CONFIG", "build", "main", "run"]
