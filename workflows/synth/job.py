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

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from unspur.config import ConfigError, SynthConfig, load_config
from unspur.data.kinds import DATA_KINDS
from unspur.io import write_parquet_atomic
from unspur.workflows.job import main_for
from unspur.workflows.synth.flags import FLAGS

__all__ = [
    "outputs",
    "CONFIG",
    "Generator",
    "generator",
    "build",
    "run",
    "main",
    "render_batch",
    "render_tables",
]

CONFIG = SynthConfig
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Generator:
    """A data kind (``unspur.data.kinds.DATA_KINDS``): its config section, row function, the extra
    tables it writes, its class names, the column of its shortcut and its train statistics."""

    config: type
    rows: Callable[[Any, str, int], tuple]  # (cfg, split, index) -> (image_row, part_rows[, region_rows])
    tables: tuple[str, ...]  # names of the per-image list tables after the image table
    classes: Callable[[Any], list[str]]
    shortcut_column: str
    statistics: Callable[[Any, Any], dict[str, float]]


def generator(kind: str) -> Generator:
    """The registered data kind ``kind`` (an error listing the registered kinds otherwise)."""
    entry = DATA_KINDS.entry(kind)
    return Generator(entry.config, entry.factory, **entry.meta)


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
    gen = generator(kind)
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


def render_tables(section: Any, out: str | Path, splits: Sequence[str] = SPLITS) -> dict[str, str]:
    """Render the generator config ``section`` (SpuriousWorld or digits-grid) for ``splits`` in this
    process, with the same row function as the Ray job, into one Parquet file per table under
    ``out``: ``images.parquet``, ``parts.parquet`` (and ``regions.parquet``). A finished render is
    reused. Returns table name -> path. Jobs that train or segment on synthetic data call this."""
    kind = next((k for k in DATA_KINDS if isinstance(section, DATA_KINDS.entry(k).config)), None)
    if kind is None:
        raise ConfigError(
            f"no synthetic generator takes a {type(section).__name__}; kinds: {DATA_KINDS.names()}"
        )
    gen, out = generator(kind), Path(out)
    paths = {name: out / f"{name}.parquet" for name in ("images", *gen.tables)}
    if not all(p.is_file() for p in paths.values()):
        sizes = _sizes(section)
        starts = dict(zip(SPLITS, np.cumsum([0] + [sizes[s] for s in SPLITS]).tolist(), strict=False))
        ids = [starts[s] + i for s in dict.fromkeys(splits) for i in range(sizes[s])]
        rows = render_batch({"id": np.asarray(ids, dtype=np.int64)}, kind, section.model_dump(mode="json"))
        out.mkdir(parents=True, exist_ok=True)
        for name in gen.tables:  # the image table last: its presence marks a finished render
            write_parquet_atomic(_explode(rows, f"_{name}"), paths[name])
        write_parquet_atomic(rows.drop_columns([f"_{name}" for name in gen.tables]), paths["images"])
    return {name: str(p) for name, p in paths.items()}


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
    stats.update(generator(cfg.kind).statistics(section, train))
    return stats


def run(cfg: SynthConfig) -> dict[str, Any]:
    """Render, write the tables and meta.json under ``cfg.out``; return the summary."""
    from ray.data import SaveMode

    out = Path(cfg.out)
    gen = generator(cfg.kind)
    ds = build(cfg).materialize()
    ds.context.execution_options.preserve_order = True  # and the writes: shards in row order
    nested = [f"_{name}" for name in gen.tables]
    ds.drop_columns(nested).write_parquet(str(out / "images"), mode=SaveMode.OVERWRITE)
    for name in gen.tables:
        ds.select_columns([f"_{name}"]).map_batches(
            _explode, batch_format="pyarrow", fn_kwargs={"column": f"_{name}"}
        ).write_parquet(str(out / name), mode=SaveMode.OVERWRITE)
    keep = ["split", "label", "group", gen.shortcut_column]
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


def _flag_overrides(args: Any) -> list[str]:
    """The generator flags as dotted overrides of the chosen kind's section (``--kind`` first)."""
    overrides = [f"kind={args.kind}"] if args.kind else []
    out = [f"out={args.out}"] if args.out is not None else []
    kind = load_config(SynthConfig, args.config, [*args.overrides, *overrides, *out]).kind
    for flag, _, _ in FLAGS[1:]:
        name = flag[2:].replace("-", "_")
        value = getattr(args, name)
        if value is None:
            continue
        kinds = _FLAGS[name][1]
        if kind not in kinds:
            raise ConfigError(f"{flag} does not apply to kind {kind!r} (it applies to {list(kinds)})")
        field = _FLAGS[name][0]
        if name == "classes":
            field = "digits" if kind == "digits_grid" else "classes"
            value = "[" + ",".join(v.strip() for v in value.split(",") if v.strip()) + "]"
        overrides.append(f"{kind}.{field}={value}")
    return overrides


def main(argv: list[str] | None = None) -> int:
    """``unspur data synth --out DIR [--kind K] [--n-train N ...] [key.sub=value ...]``."""
    return main_for(
        "data synth", SynthConfig, run, argv, flags=FLAGS, flag_overrides=_flag_overrides, show=_print_summary
    )


def outputs(cfg: SynthConfig) -> dict[str, Any]:
    """What a pipeline stage of this job offers later stages: ``images`` (the image table), one
    path per extra table (``parts`` / ``regions``), ``classes`` and ``num_classes``."""
    out = Path(cfg.out).resolve()
    gen = generator(cfg.kind)
    classes = gen.classes(_section(cfg))
    tables = {name: str(out / name) for name in gen.tables}
    return {"images": str(out / "images"), **tables, "classes": classes, "num_classes": len(classes)}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
