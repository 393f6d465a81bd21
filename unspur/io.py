"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never
half of one. Each writes a hidden ``.tmp-<name>`` beside the target, then renames it into place."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "TMP_PREFIX",
    "write_bytes_atomic",
    "write_dir_atomic",
    "write_json_atomic",
    "write_parquet_atomic",
    "write_text_atomic",
]

#: prefix of the temporary files (a store may delete leftovers of a killed writer by it)
TMP_PREFIX = ".tmp-"


def _tmp(path: Path) -> Path:
    return path.with_name(f"{TMP_PREFIX}{path.name}")


def write_bytes_atomic(data: bytes, path: str | Path, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (``fsync``: flush to disk before the rename)."""
    path = Path(path)
    tmp = _tmp(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(data: Any, path: str | Path, **dumps: Any) -> Path:
    """Write ``json.dumps(data, **dumps)`` to ``path`` atomically (e.g. ``indent=2, default=str``)."""
    return write_text_atomic(json.dumps(data, **dumps), path)


def write_parquet_atomic(table: Any, path: str | Path, fsync: bool = False) -> Path:
    """Write a pyarrow Table or a pandas DataFrame (index dropped) to ``path`` atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    tmp = _tmp(path)
    pq.write_table(table, tmp)
    if fsync:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def write_dir_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a fresh folder with ``write(folder)``, then swap it in for ``path`` (replaced if there)."""
    path = Path(path)
    tmp = _tmp(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    return path
