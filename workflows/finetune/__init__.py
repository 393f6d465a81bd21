"""``unspur finetune``: the job (:mod:`workflows.finetune.job`) and its helpers."""

from workflows.finetune.job import CONFIG, build, main, run

__all__ = ["CONFIG", "build", "main", "run"]
