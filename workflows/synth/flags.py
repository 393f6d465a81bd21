"""The options ``unspur data synth`` takes beyond --config/--out/--address (light: the CLI reads them)."""

from __future__ import annotations

from unspur.workflows.job import Flag

__all__ = ["FLAGS"]

#: options of ``unspur data synth`` beyond --config/--out/--address: (flag, type, help)
FLAGS: tuple[Flag, ...] = (
    ("--kind", str, "Generator: spuriousworld (default) or digits_grid"),
    ("--n-train", int, "Training images"),
    ("--n-val", int, "Validation images"),
    ("--n-test", int, "Test images"),
    ("--image-size", int, "Image side in pixels"),
    ("--seed", int, "Seed (rows are deterministic per seed, split and index)"),
    ("--target-digit", int, "digits_grid: the digit the marker is correlated with"),
    ("--rho", float, "spuriousworld: train class/background co-occurrence"),
    ("--cramers-v", float, "digits_grid: Cramer's V of label and marker in train"),
    ("--classes", str, "Comma list: class names (spuriousworld) or digits (digits_grid)"),
)
