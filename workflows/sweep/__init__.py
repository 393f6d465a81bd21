"""``unspur sweep``: the job (:mod:`unspur.workflows.sweep.job`) and its helpers.

``CONFIG``, ``build``, ``run`` and ``main`` are the job module's, loaded on first use (so the
``unspur`` command starts without importing Ray).
"""

from typing import Any

__all__ = ["CONFIG", "build", "main", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from unspur.workflows.sweep import job

        return getattr(job, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
