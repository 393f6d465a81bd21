"""Reading the image table for a resumable per-image job (``unspur masks``, ``adapt``, ``regions``).

The table is a Parquet file or folder (local or a pyarrow filesystem URI). :func:`plan_rows`
scans the ``image_id`` column once, keeps the wanted splits / ids, leaves out the ids a previous
run already wrote and reads each repeated id once (its first row); :func:`read_rows` then gives
the unexecuted Ray Data read of what is left; :func:`mask_index` and :func:`attach_masks` give
each row its image's masks from a masks table (SEraser's views, RaVL's mask regions).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import ray

from unspur.config import ConfigError
from unspur.workflows.masks.store import resolve_fs

__all__ = [
    "RowPlan",
    "attach_masks",
    "mask_index",
    "plan_rows",
    "read_images",
    "read_rows",
    "read_table",
    "table_columns",
]


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


def mask_index(masks: str, ids: set[str]) -> pa.Table:
    """Per image id of ``ids`` in the masks table: ``mask_rles`` (JSON list of its ok RLEs) and
    ``mask_note`` (why it has none: all rows empty, or the rows' first error)."""
    names = table_columns(masks)
    if "image_id" not in names or "rle" not in names:
        raise ConfigError(f"masks table {masks} needs image_id and rle columns; has {names}")
    columns = ["image_id", "rle"] + [c for c in ("status", "error") if c in names]
    rows = read_table(masks, columns, pc.field("image_id").isin(pa.array(sorted(ids), pa.string())))
    rles: dict[str, list[Any]] = defaultdict(list)
    empty: Counter[str] = Counter()
    errors: dict[str, str] = {}
    for row in rows.to_pylist():
        status = row.get("status") or "ok"
        if status == "ok" and row["rle"] is not None:
            rles[row["image_id"]].append(row["rle"])
        elif status == "error":
            errors.setdefault(row["image_id"], row.get("error") or "error")
        else:
            empty[row["image_id"]] += 1
    seen = sorted(set(rles) | set(empty) | set(errors))
    notes = [
        ""
        if i in rles
        else f"its mask rows failed ({errors[i]})"
        if i in errors
        else f"all {empty[i]} masks empty"
        for i in seen
    ]
    return pa.table(
        {
            "image_id": pa.array(seen, pa.string()),
            "mask_rles": pa.array([json.dumps(rles[i]) if i in rles else "" for i in seen], pa.string()),
            "mask_note": pa.array(notes, pa.string()),
        }
    )


def attach_masks(batch: pa.Table, index: pa.Table, source: str) -> pa.Table:
    """Ray Data step: the batch's rows with ``mask_rles`` / ``mask_note`` (image absent: a note)."""
    joined = batch.join(index, keys="image_id", join_type="left outer")
    absent = pc.is_null(joined["mask_note"])
    note = pc.if_else(absent, pa.scalar(f"no rows in the masks table {source}"), joined["mask_note"])
    joined = joined.set_column(joined.schema.get_field_index("mask_note"), "mask_note", note)
    rles = pc.fill_null(joined["mask_rles"], "")
    return joined.set_column(joined.schema.get_field_index("mask_rles"), "mask_rles", rles)
