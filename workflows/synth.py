"""``unspur data synth``: render a synthetic benchmark in parallel with Ray Data, into Parquet.

``ray.data.range(N)`` -> ``map_batches`` over the pure generator's ``sample_rows`` (one task per
``rows_per_block`` images) -> materialised once -> written as

- ``out/images/``  the image table (image_id, image PNG, label, class_name, group, split, ...)
- ``out/parts/``   the parts table (image_id, part, rle)
- ``out/regions/`` (digits_grid) the 4 quadrants per image with the spurious-region ground truth
- ``out/meta.json`` config, class list, counts per split and group, measured train co-occurrence.

Rows are deterministic per (seed, split, index), so the same config gives identical tables.
Example: ``unspur data synth --out DIR --n-train 2000 --rho 0.95 --seed 0``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from unspur.config import ConfigError, DigitsGridConfig, SpuriousWorldConfig, SynthConfig, load_config
from unspur.data import digits_grid, spuriousworld
from workflows._job import init_ray

__all__ = ["CONFIG", "GENERATORS", "Generator", "build", "run", "main", "parse_args", "render_batch"]

CONFIG = SynthConfig
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Generator:
    """A generator kind: its config section, row function and the extra tables it writes."""

    config: type
    rows: Callable[[Any, str, int], tuple]  # (cfg, split, index) -> (image_row, part_rows[, region_rows])
    tables: tuple[str, ...]  # names of the per-image list tables after the image table
    classes: Callable[[Any], list[str]]


GENERATORS: dict[str, Generator] = {
    "spuriousworld": Generator(
        SpuriousWorldConfig, spuriousworld.sample_rows, ("parts",), lambda c: list(c.classes)
    ),
    "digits_grid": Generator(
        DigitsGridConfig,
        digits_grid.sample_rows,
        ("parts", "regions"),
        lambda c: [digits_grid.DIGIT_NAMES[d] for d in c.digits],
    ),
}


def _section(cfg: SynthConfig) -> Any:
    return getattr(cfg, cfg.kind)


def _sizes(section: Any) -> dict[str, int]:
    return {"train": section.n_train, "val": section.n_val, "test": section.n_test}


def _locate(sizes: dict[str, int], gid: int) -> tuple[str, int]:
    for split in SPLITS:
        if gid < sizes[split]:
            return split, gid
        gid -= sizes[split]
    raise IndexError(f"row {gid} is beyond the {sum(sizes.values())} rows of the config")


def render_batch(batch: dict[str, np.ndarray], kind: str, section: dict[str, Any]) -> pa.Table:
    """Render the rows whose global ids are ``batch["id"]`` -> a table of image rows, each with
    its part (and region) rows nested in list columns ``_parts`` (``_regions``)."""
    gen = GENERATORS[kind]
    cfg = gen.config.model_validate(section)
    sizes = _sizes(cfg)
    rows = []
    for gid in batch["id"]:
        image_row, *extra = gen.rows(cfg, *_locate(sizes, int(gid)))
        rows.append(
            {**image_row, **{f"_{name}": table for name, table in zip(gen.tables, extra, strict=True)}}
        )
    return pa.Table.from_pylist(rows)


def build(cfg: SynthConfig) -> ray.data.Dataset:
    """The unexecuted Dataset of rendered rows (nested part / region lists); never calls ray.init."""
    section = _section(cfg)
    total = sum(_sizes(section).values())
    blocks = max(1, math.ceil(total / cfg.rows_per_block))
    ids = ray.data.range(total, override_num_blocks=blocks)
    ids.context.execution_options.preserve_order = True  # blocks in row order, not as tasks finish
    return ids.map_batches(
        render_batch,
        batch_size=cfg.rows_per_block,
        batch_format="numpy",
        fn_kwargs={"kind": cfg.kind, "section": section.model_dump(mode="json")},
    )


def _explode(table: pa.Table, column: str) -> pa.Table:
    """A list<struct> column -> one row per struct."""
    flat = pc.list_flatten(table[column]).combine_chunks()
    if len(flat) == 0:
        return pa.table({name.name: pa.array([], type=name.type) for name in flat.type})
    return pa.Table.from_struct_array(flat)


def _statistics(cfg: SynthConfig, rows: Any) -> dict[str, Any]:
    """Counts per split and group plus the measured train co-occurrence of the shortcut."""
    section = _section(cfg)
    stats: dict[str, Any] = {
        "counts": {s: int((rows["split"] == s).sum()) for s in SPLITS},
        "groups": {
            s: {
                str(g): int(n)
                for g, n in rows[rows["split"] == s]["group"].value_counts().sort_index().items()
            }
            for s in SPLITS
        },
    }
    train = rows[rows["split"] == "train"]
    if cfg.kind == "spuriousworld":
        own = np.asarray(section.backgrounds, dtype=object)[train["label"].to_numpy()]
        stats["train_cooccurrence"] = float(np.mean(train["background"].to_numpy() == own))
    else:
        target = section.digits.index(section.target_digit)
        stats["train_cramers_v"] = digits_grid.cramers_v(train["label"], train["has_marker"])
        stats["train_marker_rate_target"] = float(train[train["label"] == target]["has_marker"].mean())
        stats["train_marker_rate_other"] = float(train[train["label"] != target]["has_marker"].mean())
    return stats


def run(cfg: SynthConfig) -> dict[str, Any]:
    """Render, write the tables and meta.json under ``cfg.out``; return the summary."""
    from ray.data import SaveMode

    out = Path(cfg.out)
    gen = GENERATORS[cfg.kind]
    ds = build(cfg).materialize()
    ds.context.execution_options.preserve_order = True  # and the writes: shards in row order
    nested = [f"_{name}" for name in gen.tables]
    ds.drop_columns(nested).write_parquet(str(out / "images"), mode=SaveMode.OVERWRITE)
    for name in gen.tables:
        ds.select_columns([f"_{name}"]).map_batches(
            _explode, batch_format="pyarrow", fn_kwargs={"column": f"_{name}"}
        ).write_parquet(str(out / name), mode=SaveMode.OVERWRITE)
    keep = ["split", "label", "group"] + (["background"] if cfg.kind == "spuriousworld" else ["has_marker"])
    stats = _statistics(cfg, ds.select_columns(keep).to_pandas())
    meta = {
        "kind": cfg.kind,
        "config": _section(cfg).model_dump(mode="json"),
        "classes": gen.classes(_section(cfg)),
        "tables": ["images", *gen.tables],
        **stats,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return {"out": str(out), **meta}


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['kind']} -> {summary['out']}")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("groups", justify="right")
    table.add_column("smallest group", justify="right")
    for split, n in summary["counts"].items():
        groups = summary["groups"][split]
        table.add_row(split, str(n), str(len(groups)), str(min(groups.values(), default=0)))
    console = Console()
    console.print(table)
    for key in (
        "train_cooccurrence",
        "train_cramers_v",
        "train_marker_rate_target",
        "train_marker_rate_other",
    ):
        if key in summary:
            console.print(f"{key}: {summary[key]:.4f}")


#: command-line flag -> (config field, which generators accept it)
_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "n_train": ("n_train", ("spuriousworld", "digits_grid")),
    "n_val": ("n_val", ("spuriousworld", "digits_grid")),
    "n_test": ("n_test", ("spuriousworld", "digits_grid")),
    "image_size": ("image_size", ("spuriousworld", "digits_grid")),
    "seed": ("seed", ("spuriousworld", "digits_grid")),
    "rho": ("rho", ("spuriousworld",)),
    "cramers_v": ("cramers_v", ("digits_grid",)),
    "target_digit": ("target_digit", ("digits_grid",)),
    "classes": ("classes", ("spuriousworld", "digits_grid")),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="unspur data synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", "-o", default=None, help="output folder")
    p.add_argument(
        "--kind", choices=sorted(GENERATORS), default=None, help="generator (default spuriousworld)"
    )
    p.add_argument("--config", "-c", type=Path, default=None, help="YAML SynthConfig")
    p.add_argument("--address", default=None, help="Ray address (default: RAY_ADDRESS or a local Ray)")
    for flag in ("n_train", "n_val", "n_test", "image_size", "seed", "target_digit"):
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int, default=None)
    p.add_argument(
        "--rho", type=float, default=None, help="spuriousworld: train class/background co-occurrence"
    )
    p.add_argument("--cramers-v", dest="cramers_v", type=float, default=None, help="digits_grid: Cramer's V")
    p.add_argument(
        "--classes", default=None, help="comma list: class names (spuriousworld) or digits (digits_grid)"
    )
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. spuriousworld.contrast=0.8")
    return p.parse_args(argv)


def _config(args: argparse.Namespace) -> SynthConfig:
    overrides = list(args.overrides) + ([f"kind={args.kind}"] if args.kind else [])
    if args.out is not None:
        overrides.append(f"out={args.out}")
    kind = load_config(SynthConfig, args.config, overrides).kind
    for flag, (field, kinds) in _FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if kind not in kinds:
            raise ConfigError(
                f"--{flag.replace('_', '-')} does not apply to kind {kind!r} (it applies to {list(kinds)})"
            )
        if flag == "classes":
            field = "digits" if kind == "digits_grid" else "classes"
            value = "[" + ",".join(v.strip() for v in value.split(",") if v.strip()) + "]"
        overrides.append(f"{kind}.{field}={value}")
    return load_config(SynthConfig, args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = _config(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    init_ray(args.address)
    _print_summary(run(cfg))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
