"""Atomic writes (unspur.io): the target holds the new content, no temporary file is left."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from unspur.io import (
    TMP_PREFIX,
    write_bytes_atomic,
    write_dir_atomic,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)


def _leftovers(folder):
    return [p.name for p in folder.rglob(f"{TMP_PREFIX}*")]


def test_files_are_replaced_whole(tmp_path):
    write_bytes_atomic(b"old", tmp_path / "a.bin")
    write_bytes_atomic(b"new", tmp_path / "a.bin", fsync=True)
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    write_text_atomic("é", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").read_text(encoding="utf-8") == "é"
    write_json_atomic({"b": 1, "when": tmp_path}, tmp_path / "a.json", indent=2, default=str)
    assert json.loads((tmp_path / "a.json").read_text())["b"] == 1
    assert _leftovers(tmp_path) == []


def test_parquet_from_arrow_or_pandas(tmp_path):
    write_parquet_atomic(pa.table({"x": [1, 2]}), tmp_path / "a.parquet")
    write_parquet_atomic(pd.DataFrame({"x": [3]}, index=[7]), tmp_path / "b.parquet", fsync=True)
    assert pq.read_table(tmp_path / "a.parquet").column("x").to_pylist() == [1, 2]
    assert pq.read_table(tmp_path / "b.parquet").column_names == ["x"]  # index dropped
    assert _leftovers(tmp_path) == []


def test_dir_is_swapped_in(tmp_path):
    target = tmp_path / "checkpoint_000001"
    write_dir_atomic(target, lambda d: (d / "old.txt").write_text("1"))
    write_dir_atomic(target, lambda d: (d / "new.txt").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == []
