"""Seeded runs reproduce on one machine: shard order never reaches training or metrics, the
thread count is pinned, and a small pipeline run twice in fresh folders gives the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from test_pipeline import _tiny  # the tiny SpuriousWorld pipeline of that test

from unspur.config import FinetuneConfig, PipelineConfig, load_config
from unspur.data.adapters import ParquetAdapter
from unspur.workflows.finetune import job as finetune
from unspur.workflows.finetune.loop import load_tables
from unspur.workflows.masks.store import ShardStore
from unspur.workflows.pipeline import job as pipeline


def _image_rows(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": ids,
            "label": [int(i[-1]) % 2 for i in ids],
            "class_name": [["a", "b"][int(i[-1]) % 2] for i in ids],
            "split": "train",
            "path": [f"{i}.png" for i in ids],
        }
    )


def _shards(folder: Path, frame: pd.DataFrame, names: list[str]) -> None:
    """Write ``frame`` as one shard per name, the first rows into the first name."""
    folder.mkdir(parents=True)
    for name, rows in zip(names, np.array_split(np.arange(len(frame)), len(names)), strict=True):
        frame.iloc[rows].to_parquet(folder / name, index=False)


def test_reads_do_not_depend_on_the_order_shards_were_written_in(tmp_path: Path) -> None:
    ids = [f"img-{i:03d}" for i in range(12)]
    # the same rows as shards whose names sort in another order (Ray Data names them as tasks end)
    _shards(tmp_path / "a", _image_rows(ids), ["0.parquet", "1.parquet", "2.parquet"])
    _shards(tmp_path / "b", _image_rows(ids), ["2.parquet", "0.parquet", "1.parquet"])
    parts = pd.DataFrame({"image_id": ids[::-1], "part": "x", "rle": [None] * 12})
    _shards(tmp_path / "pa", parts, ["0.parquet", "1.parquet"])
    _shards(tmp_path / "pb", parts, ["1.parquet", "0.parquet"])
    tables = [
        load_tables({"images": [str(tmp_path / s)], "masks": str(tmp_path / m)})
        for s, m in (("a", "pa"), ("b", "pb"))
    ]
    assert list(tables[0][0]["image_id"]) == list(tables[1][0]["image_id"]) == ids
    assert list(tables[0][1]["image_id"]) == list(tables[1][1]["image_id"]) == ids
    loaded = [ParquetAdapter(tmp_path / s).load().images for s in "ab"]
    pd.testing.assert_frame_equal(loaded[0], loaded[1])
    assert list(loaded[0]["image_id"]) == ids


def test_mask_store_reads_rows_in_image_id_order(tmp_path: Path) -> None:
    store = ShardStore(str(tmp_path / "masks"))
    empty = {"rle": None, "bbox": None, "score": None, "segmenter": "gt", "status": "ok", "error": ""}
    for ids in ([f"{c}1", f"{c}2"] for c in "fedcba"):  # shard names are random uuids: any order on disk
        store.write(
            {k: [v] * 2 for k, v in empty.items()}
            | {"image_id": ids, "concept": ["k"] * 2, "class_name": ["x"] * 2}
        )
    assert store.read().column("image_id").to_pylist() == [f"{c}{i}" for c in "abcdef" for i in (1, 2)]
    assert isinstance(store.read(columns=["image_id"]), pa.Table)


def test_num_threads_zero_is_resolved_into_the_config(tmp_path: Path) -> None:
    cfg = load_config(FinetuneConfig, None, [f"out={tmp_path}"])
    assert cfg.train.num_threads == 0
    assert finetune.resolve(cfg).train.num_threads == torch.get_num_threads()
    explicit = load_config(FinetuneConfig, None, [f"out={tmp_path}", "train.num_threads=1"])
    assert finetune.resolve(explicit).train.num_threads == 1
    ray_train = load_config(
        FinetuneConfig, None, [f"out={tmp_path}", "run.num_workers=2", "run.cpus_per_worker=3"]
    )
    assert finetune.resolve(ray_train).train.num_threads == 3  # the CPUs each worker holds


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_small_pipeline_twice_in_fresh_folders_gives_identical_numbers(
    tmp_path: Path, ray_local, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # four render blocks, so Ray Data's shards can come back in any order
    overrides = [
        "control.enabled=false",
        "cft.train.epochs=2",
        "cft.run.eval_every=1",
        "cft.run.figure_images=0",
    ]
    outs = []
    for name in ("first", "second"):
        out = tmp_path / name
        cfg = load_config(PipelineConfig, _tiny(out), overrides)
        stages = [s for s in pipeline.prepare(cfg) if s.name != "evaluate_base"]  # cft's evaluation suffices
        stages[0].config = stages[0].config.model_copy(update={"rows_per_block": 24})
        pipeline.run(cfg, stages, log=lambda _: None)
        outs.append(out)
    first, second = outs
    assert len(list((first / "data" / "images").glob("*.parquet"))) > 1
    tables = [load_tables({"images": [str(o / "data" / "images")]})[0] for o in outs]
    pd.testing.assert_frame_equal(tables[0], tables[1])  # whatever order the shards were written in
    for model in ("base", "cft"):
        a, b = _weights(first / model / "model"), _weights(second / model / "model")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), model
        sa, sb = (json.loads((o / model / "finetune_summary.json").read_text()) for o in outs)
        assert sa["selected_epoch"] == sb["selected_epoch"]
        assert sa["num_threads"] == sb["num_threads"] == torch.get_num_threads()
        assert [h["train"] for h in sa["history"] if "train" in h] == [
            h["train"] for h in sb["history"] if "train" in h
        ]
        if model == "base":
            continue
        ma, mb = (json.loads((o / "evaluate" / model / "metrics.json").read_text()) for o in outs)
        assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True), model
        pa_, pb_ = (pd.read_parquet(o / "evaluate" / model / "predictions.parquet") for o in outs)
        pd.testing.assert_frame_equal(pa_, pb_)
