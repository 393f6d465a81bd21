"""``unspur adapt`` on a local Ray: predictions with zero-shot and tuned columns, bad images and
missing masks as error rows with reasons (or the zero-shot fallback), SIGKILL half way then a
rerun that finishes without tuning a finished image again, and the check on val that keeps the
zero-shot head when SEraser does not help there."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unspur.config import ClipModelConfig, SpuriousWorldConfig
from unspur.masks import encode
from unspur.workflows.adapt import job
from unspur.workflows.masks.store import ShardStore

ROOT = Path(__file__).resolve().parents[2]
WORLD = SpuriousWorldConfig(image_size=32, n_test=24)
FAST = ["seraser.steps=3", "compute.batch_size=4", "compute.num_cpus=0.25", "examples=2", "track=false"]


def _checkpoint(path: Path) -> str:
    from unspur.models import save_checkpoint
    from unspur.models.families import get_family

    cfg = ClipModelConfig(img_size=32, classes=WORLD.classes)
    save_checkpoint(path, get_family("clip").build(cfg), cfg)
    return str(path)


def _world(tmp: Path, n: int, extra: list[dict] | None = None, n_val: int = 0) -> tuple[str, str]:
    """``n`` SpuriousWorld test images and ``n_val`` val images (+ ``extra`` image rows) and a
    masks-job style masks table."""
    from unspur.data.spuriousworld import sample_rows

    images, masks = [], []
    for split, i in [("test", i) for i in range(n)] + [("val", i) for i in range(n_val)]:
        row, parts = sample_rows(WORLD, split, i)
        images.append({k: row[k] for k in ("image_id", "image", "label", "class_name", "group", "split")})
        masks += [
            {"image_id": p["image_id"], "concept": p["part"], "rle": p["rle"], "status": "ok", "error": ""}
            for p in parts
        ]
    images += extra or []
    pq.write_table(pa.Table.from_pylist(images), tmp / "images.parquet")
    pq.write_table(pa.Table.from_pylist(masks), tmp / "masks.parquet")
    return str(tmp / "images.parquet"), str(tmp / "masks.parquet")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return _checkpoint(tmp_path_factory.mktemp("clip") / "model")


def _args(out: Path, checkpoint: str, images: str, masks: str) -> list[str]:
    return ["--out", str(out), f"checkpoint={checkpoint}", f"images={images}", f"masks={masks}", *FAST]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_images_and_missing_masks_are_error_rows_with_reasons(ray_local, tmp_path, checkpoint) -> None:
    good = _png(np.full((32, 32, 3), 120, np.uint8))
    base = {"label": 0, "class_name": "bird", "group": "bird/water", "split": "test"}
    extra = [
        {"image_id": "truncated", "image": good[: len(good) // 2], **base},
        {"image_id": "empty", "image": b"", **base},
        {"image_id": "no-mask", "image": good, **base},
        {"image_id": "all-empty", "image": good, **base},
        {"image_id": "failed", "image": good, **base},
    ]
    images, masks = _world(tmp_path, 4, extra)
    rows = pq.read_table(masks).to_pylist()
    blank = encode(np.zeros((32, 32), bool))
    rows += [
        {"image_id": "all-empty", "concept": "beak", "rle": blank, "status": "empty", "error": ""},
        {
            "image_id": "failed",
            "concept": "beak",
            "rle": None,
            "status": "error",
            "error": "segmenter crashed",
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), masks)
    out = tmp_path / "run"
    assert job.main(_args(out, checkpoint, images, masks)) == 0
    pred = pq.read_table(out / "predictions.parquet").to_pandas().set_index("image_id")
    assert len(pred) == 9  # rows in == rows out
    reasons = {
        "truncated": "cannot decode",
        "empty": "0 bytes",
        "no-mask": "no rows in the masks table",
        "all-empty": "all 1 masks empty",
        "failed": "segmenter crashed",
    }
    for image_id, needle in reasons.items():
        row = pred.loc[image_id]
        assert row["status"] == "error" and needle in row["error"], (image_id, row["error"])
        assert row["pred"] == -1 and row["pred_before"] == -1
    ok = pred[pred["status"] == "ok"]
    assert len(ok) == 4 and (ok["error"] == "").all() and (ok["pred"] >= 0).all()
    assert all(abs(sum(p) - 1) < 1e-4 for p in ok["probs"]) and all(len(p) == 4 for p in ok["probs_before"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_error"] == 5 and metrics["n_ok"] == 4 and metrics["after"]["n"] == 4
    assert set(metrics["per_group_table"]) == set(ok["group"]) and (out / "examples.png").is_file()

    fallback = tmp_path / "fallback"
    assert job.main([*_args(fallback, checkpoint, images, masks), "seraser.on_missing_mask=zero_shot"]) == 0
    pred = pq.read_table(fallback / "predictions.parquet").to_pandas().set_index("image_id")
    for image_id in ("no-mask", "all-empty", "failed"):
        row = pred.loc[image_id]
        assert row["status"] == "zero_shot" and row["pred"] == row["pred_before"] >= 0
        assert reasons[image_id] in row["error"]
    assert (pred.loc[["truncated", "empty"], "status"] == "error").all()


def test_sigkill_half_way_then_rerun_tunes_only_the_rest(kill_half_way, tmp_path, checkpoint) -> None:
    images, masks = _world(tmp_path, 24)
    out = tmp_path / "run"
    args = [*_args(out, checkpoint, images, masks), "compute.batch_size=2", "seraser.steps=20"]
    kill_half_way(["adapt", *args], out / "predictions", at_least=2)
    store = ShardStore(str(out / "predictions"), job.PREDICTION_SCHEMA)
    killed = store.done_ids()
    assert 0 < len(killed) < 24, len(killed)
    shards = set(store.files())

    assert job.main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["already_done"] == len(killed) and metrics["images"] == 24 - len(killed)
    assert metrics["complete"] and metrics["n_ok"] == 24
    new = [f for f in store.files() if f not in shards]
    new_ids = set(pq.read_table(new, columns=["image_id"]).column("image_id").to_pylist()) if new else set()
    assert not new_ids & killed  # no finished image tuned again
    pred = pq.read_table(out / "predictions.parquet").to_pandas()
    assert sorted(pred["image_id"]) == [f"test-{i:06d}" for i in range(24)]
    assert not list((out / "predictions").glob(".tmp-*"))


def test_a_failed_check_on_val_keeps_the_zero_shot_head_for_every_image(
    ray_local, tmp_path, checkpoint
) -> None:
    images, masks = _world(tmp_path, 6, n_val=8)
    out = tmp_path / "run"
    args = [*_args(out, checkpoint, images, masks), "check.split=val", "check.min_gain=1.0"]  # cannot pass
    assert job.main(args) == 0
    check = json.loads((out / "metrics.json").read_text())["check"]
    assert check["split"] == "val" and check["n"] == 8 and check["trusted"] is False
    assert "kept the zero-shot head" in check["note"] and "on val SEraser moved wga" in check["note"]
    val = pq.read_table(out / "check" / "predictions.parquet").to_pandas()
    assert sorted(val["image_id"]) == [f"val-{i:06d}" for i in range(8)] and (val["status"] == "ok").all()
    pred = pq.read_table(out / "predictions.parquet").to_pandas()
    assert sorted(pred["image_id"]) == [f"test-{i:06d}" for i in range(6)]
    assert (pred["status"] == "zero_shot").all() and (pred["error"] == check["note"]).all()
    assert (pred["pred"] == pred["pred_before"]).all() and pred["loss_start"].isna().all()
    assert all(np.array_equal(a, b) for a, b in zip(pred["probs"], pred["probs_before"], strict=True))

    assert job.main(args) == 0  # a rerun finds both stores complete: nothing tuned again
    again = json.loads((out / "metrics.json").read_text())
    assert again["images"] == 0 and again["check"] == check


def test_a_passed_check_tunes_the_split(ray_local, tmp_path, checkpoint, monkeypatch) -> None:
    import unspur.seraser

    monkeypatch.setattr(unspur.seraser, "check_verdict", lambda before, after, check: (True, "helps on val"))
    images, masks = _world(tmp_path, 4, n_val=4)
    out = tmp_path / "run"
    assert job.main([*_args(out, checkpoint, images, masks), "check.split=val"]) == 0
    assert json.loads((out / "metrics.json").read_text())["check"]["trusted"] is True
    pred = pq.read_table(out / "predictions.parquet").to_pandas()
    assert len(pred) == 4 and (pred["status"] == "ok").all() and pred["loss_end"].notna().all()


def test_bad_configs_are_refused(tmp_path, checkpoint, capsys) -> None:
    images, masks = _world(tmp_path, 2)
    args = _args(tmp_path / "run", checkpoint, images, masks)
    assert job.main([*args, "seraser.n_ctx=3"]) == 2
    assert "is 4 tokens" in capsys.readouterr().err
    assert job.main([*args, "check.split=test"]) == 2
    assert "is the split SEraser predicts" in capsys.readouterr().err
    assert job.main([*args, "check.split=val"]) == 2  # the table holds no val rows
    assert "has no rows in image table" in capsys.readouterr().err
    assert job.main([*args, f"masks={tmp_path / 'nope.parquet'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert job.main([*args, "seraser.fill=pink"]) == 2
