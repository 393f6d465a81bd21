"""``unspur discover``: the job (:mod:`unspur.workflows.discover.job`) and its helpers.

``CONFIG``, ``build``, ``run`` and ``main`` are the job module's, loaded on first use.
"""

from unspur.workflows.job import job_attributes

__all__ = ["CONFIG", "build", "main", "run"]
__getattr__ = job_attributes(__name__)
