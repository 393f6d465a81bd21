"""Reading the image table for a resumable per-image job (``unspur masks``, ``unspur adapt``).

The table is a Parquet file or folder (local or a pyarrow filesystem URI). :func:`plan_rows`
scans the ``image_id`` column once, keeps the wanted splits / ids, leaves out the ids a previous
run already wrote and reads each repeated id once (its first row); :func:`read_rows` then gives
the unexecuted Ray Data read of what is left.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from unspur.workflows.masks.store import resolve_fs

__all__ = ["RowPlan", "plan_rows", "read_images", "read_rows", "read_table", "table_columns"]


def table_columns(uri: str) -> list[str]:
    """The column names of the image table at ``uri``."""
    fs, path = resolve_fs(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").schema.names


def read_table(uri: str, columns: list[str], flt: Any = None) -> pa.Table:
    """``columns`` of the rows of the table at ``uri`` that pass the pyarrow filter ``flt``."""
    fs, path = resolve_fs(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=columns, filter=flt)


def _strings(values: list[str] | None) -> pa.Array | None:
    return None if values is None else pa.array(values, pa.string())


def _in_splits(table: pa.Table, splits: list[str] | None) -> pa.Table:
    if splits is None:
        return table
    return table.filter(pc.is_in(table["split"], value_set=pa.array(splits, pa.string())))


@dataclass
class RowPlan:
    """What a run reads: the table and its ``columns``, the ids to ``skip`` (done or repeated),
    the first rows of repeated ids still to do (``firsts``), ``splits`` / ``keep`` filters,
    ``counts`` (rows_in, unique_images, duplicate_rows, already_done, to_do) and every ``wanted`` id."""

    images: str
    columns: list[str]
    splits: list[str] | None
    keep: list[str] | None
    skip: list[str]
    firsts: pa.Table | None
    counts: dict[str, int] = field(default_factory=dict)
    wanted: set[str] = field(default_factory=set)


def plan_rows(
    images: str,
    columns: list[str],
    done: set[str],
    splits: list[str] | None = None,
    keep: list[str] | None = None,
) -> RowPlan:
    """Scan ids (one column), find done and repeated ids; repeated ids are read once, first row wins."""
    ids = _in_splits(read_table(images, ["image_id"] + (["split"] if splits is not None else [])), splits)
    if keep is not None:
        ids = ids.filter(pc.is_in(ids["image_id"], value_set=pa.array(keep, pa.string())))
    counts = Counter(ids.column("image_id").to_pylist())
    done = done & set(counts)
    repeated = sorted(i for i, n in counts.items() if n > 1)
    firsts = None
    todo_repeated = [i for i in repeated if i not in done]
    if todo_repeated:
        flt = pc.field("image_id").isin(pa.array(todo_repeated, pa.string()))
        rows = _in_splits(read_table(images, columns, flt), splits)
        seen: set[str] = set()
        first_idx = []
        for i, image_id in enumerate(rows.column("image_id").to_pylist()):
            if image_id not in seen:
                seen.add(image_id)
                first_idx.append(i)
        firsts = rows.take(pa.array(first_idx, pa.int64()))
    stats = {
        "rows_in": int(ids.num_rows),
        "unique_images": len(counts),
        "duplicate_rows": int(ids.num_rows) - len(counts),
        "already_done": len(done),
        "to_do": len(counts) - len(done),
    }
    return RowPlan(images, columns, splits, keep, sorted(done | set(repeated)), firsts, stats, set(counts))


def _select_rows(batch: pa.Table, skip: pa.Array, keep: pa.Array | None, splits: pa.Array | None) -> pa.Table:
    """Ray Data filter: drop ids in ``skip``, keep only ``keep`` ids and ``splits`` (None = all)."""
    mask = pc.invert(pc.is_in(batch["image_id"], value_set=skip))
    if keep is not None:
        mask = pc.and_(mask, pc.is_in(batch["image_id"], value_set=keep))
    if splits is not None:
        mask = pc.and_(mask, pc.is_in(batch["split"], value_set=splits))
    return batch.filter(mask)


def read_images(images: str) -> ray.data.Dataset:
    """The image table as a Dataset, through Ray Data's Parquet reader that lists files on the
    driver. Ray 2.60's default reader lists them in a ``ListFiles`` task whose thread pool races
    at shutdown (its completion thread enqueues stop markers after the pool was interrupted), so a
    normal run could print an ``InterruptedError`` traceback from that task."""
    context = ray.data.DataContext.get_current()
    previous, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(images)
    finally:
        context.use_datasource_v2 = previous


def read_rows(plan: RowPlan) -> ray.data.Dataset:
    """The unexecuted read of the rows ``plan`` leaves to do (``plan.columns``, each id once)."""
    ds = read_images(plan.images).select_columns(plan.columns)
    ds = ds.map_batches(
        _select_rows,
        batch_format="pyarrow",
        fn_kwargs={"skip": _strings(plan.skip), "keep": _strings(plan.keep), "splits": _strings(plan.splits)},
    )
    if plan.firsts is not None and plan.firsts.num_rows:
        ds = ds.union(ray.data.from_arrow(plan.firsts.select(plan.columns)))
    return ds
