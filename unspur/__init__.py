"""unspur: find and remove spurious correlations in vision models, at cluster scale, on Ray.

Subpackages: the core (``unspur.config``, ``unspur.data``, ``unspur.losses``, ``unspur.models``
...), and ``unspur.actors`` (Ray Data callables), ``unspur.workflows`` (the Ray jobs and the
``unspur`` command) and ``unspur.tune_spaces`` (search spaces). The repository keeps those three in
top-level folders (``actors/``, ``workflows/``, ``tune_spaces/``); an installed wheel holds them
inside this package (pyproject's ``package-dir``), so no generic top-level name is installed.
Run from a checkout (tests, a Ray job's uploaded working dir), this package's search path gains
the checkout's root, so the same ``unspur.workflows`` names resolve to those folders.
"""

from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent
if all((_CHECKOUT / name / "__init__.py").is_file() for name in ("actors", "workflows", "tune_spaces")):
    __path__.append(str(_CHECKOUT))  # noqa: F821 - a package's module search path
