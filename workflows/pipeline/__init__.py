"""``unspur pipeline``: the job (:mod:`workflows.pipeline.job`) and its helpers."""

from workflows.pipeline.job import CONFIG, build, main, run

__all__ = ["CONFIG", "build", "main", "run"]
