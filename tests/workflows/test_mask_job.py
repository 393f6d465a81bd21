"""``unspur masks`` end to end on a local Ray: ground truth on SpuriousWorld (with validation and
a resumed rerun), the bad-input corpus, and SIGKILL of a tiny grounded_sam job half way."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from unspur.actors.ground_truth import match_part
from unspur.data.adapters import DatasetError
from unspur.masks import decode, encode
from unspur.workflows.image_table import read_images
from unspur.workflows.masks import job
from unspur.workflows.masks.store import ShardStore

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "workflows" / "configs"


def _store_rows(out: Path, which: str = "masks") -> list[dict]:
    return ShardStore(str(out / which)).read().to_pylist()


def _pairs_unique(rows: list[dict]) -> None:
    pairs = Counter((r["image_id"], r["concept"]) for r in rows)
    assert max(pairs.values()) == 1, [p for p, n in pairs.items() if n > 1][:5]


def test_synth_ground_truth_validates_round_trips_and_resumes(ray_local, tmp_path):
    out = tmp_path / "run"
    args = [
        "--config",
        str(CONFIGS / "masks_synth.yaml"),
        "--out",
        str(out),
        "synth.n_train=24",
        "validation.images_per_class=3",
        "overlays=4",
        "compute.batch_size=4",
    ]
    assert job.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["error"] == 0 and summary["duplicate_rows"] == 0
    bank = json.loads((out / job.VALIDATED_BANK).read_text())
    stats = bank["validation"]["concepts"]
    assert len(stats) == 12 and all(s["n_images"] == 3 for s in stats)
    kept = {(s["class_name"], s["concept"]) for s in stats if s["kept"]}
    assert kept == {
        (s["class_name"], s["concept"]) for s in stats if s["occurrence"] >= 0.15 and s["coverage"] >= 0.2
    }
    assert ("bird", "feather") in kept and ("bird", "long beak") not in kept  # a beak is ~2% of a bird
    rows = _store_rows(out)
    _pairs_unique(rows)
    images = pq.read_table(out / "data" / "images.parquet", columns=["image_id", "class_name"]).to_pylist()
    expected = {(im["image_id"], c) for im in images for cls, c in kept if cls == im["class_name"]}
    assert {(r["image_id"], r["concept"]) for r in rows} == expected  # every kept pair exactly once
    parts = {
        (p["image_id"], p["part"]): p["rle"]
        for p in pq.read_table(out / "data" / "parts.parquet").to_pylist()
    }
    for r in rows:
        assert r["status"] == "ok"
        part = match_part(r["concept"], [p for i, p in parts if i == r["image_id"]])
        assert np.array_equal(decode(r["rle"]), decode(parts[(r["image_id"], part)]))  # exact round trip
    assert (out / "mask_overlays.png").is_file()

    shards_before = sorted(os.listdir(out / "masks"))
    assert job.main(args) == 0  # rerun: nothing left to do
    again = json.loads((out / "summary.json").read_text())
    assert again["to_do"] == 0 and again["images"] == 0 and again["validation"]["reused"]
    assert sorted(os.listdir(out / "masks")) == shards_before

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("masks").experiment_id])
    assert len(runs) == 2 and all("images_per_s" in r.data.metrics for r in runs)
    assert any(a.path == "figures" for a in client.list_artifacts(runs[-1].info.run_id))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def _bad_corpus(tmp_path: Path) -> tuple[str, str]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, format="JPEG")
    good = _png(rgb)
    images = {
        "rgb": good,
        "rgba": _png(np.concatenate([rgb, rgb[..., :1]], axis=2)),
        "grey": _png(rgb[..., 0]),
        "deep16": _png(rgb[..., 0].astype(np.uint16) * 257),
        "cmyk": cmyk.getvalue(),
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "bomb": _bomb(),
    }
    rows = [{"image_id": k, "image": v, "class_name": "bird"} for k, v in images.items()]
    rows += [
        {"image_id": "rgb", "image": b"", "class_name": "bird"},  # a repeat: the first row wins
        {"image_id": "stranger", "image": good, "class_name": "unicorn"},
    ]
    table = tmp_path / "images.parquet"
    pq.write_table(pa.Table.from_pylist(rows), table)
    beak = np.zeros((16, 16), bool)
    beak[2:6, 3:9] = True
    parts = [{"image_id": k, "part": "beak", "rle": encode(beak)} for k in images]
    parts_path = tmp_path / "parts.parquet"
    pq.write_table(pa.Table.from_pylist(parts), parts_path)
    return str(table), str(parts_path)


def test_bad_input_corpus_rows_in_equal_rows_out_plus_errors(ray_local, tmp_path):
    table, parts = _bad_corpus(tmp_path)
    out = tmp_path / "run"
    args = [
        "--out",
        str(out),
        f"images={table}",
        "concepts={bird: [long beak, wing]}",
        "segmenter.name=ground_truth",
        f"segmenter.ground_truth.parts={parts}",
        "validation.enabled=false",
        "track=false",
        "overlays=0",
        "compute.batch_size=3",
    ]
    assert job.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_in"], summary["unique_images"], summary["duplicate_rows"]) == (10, 9, 1)
    assert summary["images"] == 9 and summary["complete"]
    rows = _store_rows(out)
    _pairs_unique(rows)
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["image_id"], []).append(r)
    assert len(by_id) == 9
    for image_id in ("rgb", "rgba", "grey", "deep16", "cmyk"):
        status = {r["concept"]: r["status"] for r in by_id[image_id]}
        assert status == {"long beak": "ok", "wing": "empty"}, image_id
    reasons = {"truncated": "cannot decode", "empty": "0 bytes", "bomb": "decompression bomb"}
    for image_id, needle in reasons.items():
        assert [r["status"] for r in by_id[image_id]] == ["error", "error"]
        assert all(needle in r["error"] for r in by_id[image_id]), by_id[image_id][0]["error"]
    (stranger,) = by_id["stranger"]
    assert stranger["status"] == "error" and "unicorn" in stranger["error"]
    errors = sum(r["status"] == "error" for r in rows)
    assert summary["error"] == errors == 7 and summary["error_images"] == 4


def test_sigkill_half_way_then_rerun_completes_without_duplicates(kill_half_way, tmp_path):
    out = tmp_path / "run"
    overrides = ["synth.n_train=32", "compute.batch_size=2", "overlays=0", "track=false"]
    config = ["--config", str(CONFIGS / "masks_grounded_sam_tiny.yaml"), "--out", str(out)]
    kill_half_way(["masks", *config, *overrides], out / "masks", at_least=4)
    killed = ShardStore(str(out / "masks")).done_ids()
    assert 0 < len(killed) < 32, len(killed)

    assert job.main([*config, *overrides]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["already_done"] == len(killed) and summary["images"] == 32 - len(killed)
    assert summary["complete"] and summary["error"] == 0
    rows = _store_rows(out)
    _pairs_unique(rows)
    ids = {r["image_id"] for r in rows}
    assert ids == {f"train-{i:06d}" for i in range(32)}  # no losses
    assert len(rows) == 32 * 3 and {r["status"] for r in rows} <= {"ok", "empty"}
    assert not list((out / "masks").glob(".tmp-*"))


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("masks_*.yaml")))
def test_shipped_configs_validate(name):
    from unspur.config import MasksConfig, load_config

    cfg = load_config(MasksConfig, CONFIGS / name)
    assert cfg.out


def test_prepare_reads_a_concept_bank_and_keeps_the_configured_kinds(tmp_path):
    from unspur.concept_bank import BANK_FORMAT
    from unspur.config import MasksConfig

    table, parts = _bad_corpus(tmp_path)
    entry = {"source": "test", "score": 1.0}
    bank = {
        "format": BANK_FORMAT,
        "classes": ["bird"],
        "concepts": {
            "bird": [
                {"concept": "beak", "kind": "important", **entry},
                {"concept": "animal", "kind": "superclass", **entry},
                {"concept": "water", "kind": "around", **entry},
            ]
        },
        "dropped": {"bird": []},
    }
    (tmp_path / "bank.json").write_text(json.dumps(bank))
    base = {
        "images": table,
        "bank": str(tmp_path / "bank.json"),
        "segmenter": {"name": "ground_truth", "ground_truth": {"parts": parts}},
    }
    assert job.prepare(MasksConfig(**base)).concepts == {"bird": ["beak"]}
    both = job.prepare(MasksConfig(**base, kinds=["important", "around"]))
    assert both.concepts == {"bird": ["beak", "water"]}
    assert both.columns == ["image_id", "class_name", "image"]
    with pytest.raises(DatasetError, match="image table"):
        job.prepare(MasksConfig(**{**base, "images": str(tmp_path / "missing.parquet")}))


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["concepts={bird: [beak]}"], "sam_checkpoint"),  # real SAM size without weights
        (["segmenter.name=ground_truth"], "bank"),  # neither bank nor concepts
        (["concepts={bird: [beak]}", "segmenter.name=clipseg", "compute.num_cpus=0"], "num_cpus"),
        (["concepts={bird: [beak]}", "segmenter.name=clipseg", "validation.min_coverage=2"], "min_coverage"),
    ],
)
def test_bad_configs_are_refused_before_any_compute(tmp_path, capsys, overrides, needle):
    assert job.main(["--out", str(tmp_path), f"images={tmp_path / 'x.parquet'}", *overrides]) == 2
    assert needle in capsys.readouterr().err


def test_the_image_table_is_listed_on_the_driver_not_in_a_listfiles_task(ray_local, tmp_path):
    """Ray 2.60's default Parquet reader lists files in a ListFiles task whose thread pool can
    print an InterruptedError traceback at its shutdown on a normal run; the masks and adapt jobs
    read (workflows/image_table.py) with the reader that lists on the driver, and leaves Ray Data's default as it was."""
    pq.write_table(pa.table({"image_id": ["a"], "class_name": ["bird"]}), tmp_path / "t.parquet")
    before = ray_local.data.DataContext.get_current().use_datasource_v2
    plan = read_images(str(tmp_path / "t.parquet"))._logical_plan.dag.dag_str
    assert "ListFiles" not in plan and "ReadParquet" in plan
    assert ray_local.data.DataContext.get_current().use_datasource_v2 == before
