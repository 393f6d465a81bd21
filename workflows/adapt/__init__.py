"""``unspur adapt``: the job (:mod:`unspur.workflows.adapt.job`) and its report figure.

``CONFIG``, ``build``, ``run`` and ``main`` are the job module's, loaded on first use.
"""

from unspur.workflows.job import job_attributes

__all__ = ["CONFIG", "build", "main", "run"]
__getattr__ = job_attributes(__name__)
