"""``unspur synth``: the job (:mod:`workflows.synth.job`) and its helpers."""

from workflows.synth.job import CONFIG, build, main, run

__all__ = ["CONFIG", "build", "main", "run"]
