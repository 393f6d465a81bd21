"""Parquet shards of a per-image job (the mask stage's masks, SEraser's predictions): atomic
writes, done ids for resuming, reads.

A store is a folder (local path or a pyarrow filesystem URI such as ``s3://bucket/masks``) of
``part-<uuid>.parquet`` shards, one per actor batch. On a local disk a shard is written to a
hidden temporary name and renamed into place, so a killed job leaves complete shards or none (an
object store's PUT is atomic by itself). A rerun reads the ``image_id`` column of the finished
shards and skips those images: every (image, concept) is written exactly once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from unspur.io import TMP_PREFIX, write_parquet_atomic

__all__ = ["MASK_SCHEMA", "ShardStore", "resolve_fs"]

RLE_TYPE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
#: Parquet schema of a mask shard (ARCHITECTURE.md masks contract + the image's class)
MASK_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("concept", pa.string()),
        ("class_name", pa.string()),
        ("rle", RLE_TYPE),
        ("bbox", pa.list_(pa.int32())),
        ("score", pa.float32()),
        ("segmenter", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)
_PREFIX, _TMP = "part-", TMP_PREFIX


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """A local path or a filesystem URI -> (pyarrow filesystem, path inside it)."""
    if "://" in uri and not uri.startswith("file://"):
        return pafs.FileSystem.from_uri(uri)
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


class ShardStore:
    """Shards of ``schema`` rows (default: mask rows) under ``uri`` (created if missing)."""

    def __init__(self, uri: str, schema: pa.Schema = MASK_SCHEMA) -> None:
        self.uri = uri
        self.schema = schema
        self.fs, self.root = resolve_fs(uri)
        self.fs.create_dir(self.root, recursive=True)
        self.atomic_rename = isinstance(self.fs, pafs.LocalFileSystem)

    def write(self, columns: Mapping[str, Sequence[Any]] | pa.Table) -> str:
        """Write one shard (a table or columns of the store's schema); returns its file name."""
        schema = self.schema
        table = (
            columns
            if isinstance(columns, pa.Table)
            else pa.table(
                {name: pa.array(list(columns[name]), type=schema.field(name).type) for name in schema.names},
                schema=schema,
            )
        )
        name = f"{_PREFIX}{uuid.uuid4().hex}.parquet"
        final = f"{self.root}/{name}"
        if not self.atomic_rename:
            pq.write_table(table, final, filesystem=self.fs)
            return name
        write_parquet_atomic(table, final, fsync=True)
        return name

    def files(self) -> list[str]:
        """Finished shards, sorted by name."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return sorted(
            i.path
            for i in infos
            if i.is_file and i.base_name.startswith(_PREFIX) and i.base_name.endswith(".parquet")
        )

    def remove_partial(self) -> int:
        """Delete temporary files a killed writer left behind; returns how many."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        stale = [i.path for i in infos if i.is_file and i.base_name.startswith(_TMP)]
        for path in stale:
            self.fs.delete_file(path)
        return len(stale)

    def read(self, columns: Sequence[str] | None = None, ids: Iterable[str] | None = None) -> pa.Table:
        """All finished rows sorted by image id and concept (optionally only ``columns`` and image
        ids in ``ids``)."""
        files = self.files()
        if not files:
            empty = self.schema.empty_table()
            return empty if columns is None else empty.select(list(columns))
        data = pads.dataset(files, filesystem=self.fs, format="parquet", schema=self.schema)
        flt = None if ids is None else pc.field("image_id").isin(pa.array(sorted(set(ids)), type=pa.string()))
        table = data.to_table(columns=None if columns is None else list(columns), filter=flt)
        keys = [c for c in ("image_id", "concept") if c in table.column_names]  # not shard-name order
        return table.sort_by([(c, "ascending") for c in keys]) if keys else table

    def done_ids(self) -> set[str]:
        """Image ids that already have rows in a finished shard."""
        return set(self.read(columns=["image_id"]).column("image_id").to_pylist())
