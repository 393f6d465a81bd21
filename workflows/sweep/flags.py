"""The options ``unspur sweep`` takes beyond --config/--out/--address (light: the CLI reads them)."""

from __future__ import annotations

from unspur.workflows.job import Flag

__all__ = ["FLAGS"]

#: options of ``unspur sweep`` beyond --config/--out/--address: (flag, type, help)
FLAGS: tuple[Flag, ...] = (
    ("--space", str, "Search space YAML, or a name under tune_spaces/ (sets space=)"),
    ("--samples", int, "Trials of a random/optuna search (sets num_samples=)"),
)
