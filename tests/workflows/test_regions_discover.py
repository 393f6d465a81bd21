"""``unspur regions`` and ``unspur discover`` on a local Ray: region rows per image with truth
flags, a bad image as one error row, SIGKILL half way then a rerun that embeds only the rest, and
discovery's tables, flags and figures on the region table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from unspur.config import ClipModelConfig, DigitsGridConfig
from unspur.data.digits_grid import DIGIT_NAMES, sample_rows
from unspur.workflows.discover import job as discover_job
from unspur.workflows.masks.store import ShardStore
from unspur.workflows.regions import job

GRID = DigitsGridConfig(image_size=32, digits=[0, 1, 2], n_train=12, n_val=24, n_test=6, cramers_v=0.9)
COLUMNS = ("image_id", "image", "label", "class_name", "group", "split", "marker_rle")
FAST = ["compute.batch_size=4", "compute.num_cpus=0.25", "regions.truth_column=marker_rle"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    from unspur.models import save_checkpoint
    from unspur.models.families import get_family

    cfg = ClipModelConfig(img_size=32, classes=[DIGIT_NAMES[d] for d in GRID.digits])
    path = tmp_path_factory.mktemp("clip") / "model"
    save_checkpoint(path, get_family("clip").build(cfg), cfg)
    return str(path)


def _table(tmp: Path, splits: dict[str, int], extra: list[dict] | None = None) -> str:
    rows = [
        {k: sample_rows(GRID, split, i)[0][k] for k in COLUMNS}
        for split, n in splits.items()
        for i in range(n)
    ]
    pq.write_table(pa.Table.from_pylist(rows + (extra or [])), tmp / "images.parquet")
    return str(tmp / "images.parquet")


def _args(out: Path, checkpoint: str, images: str) -> list[str]:
    return ["--out", str(out), f"checkpoint={checkpoint}", f"images={images}", *FAST]


def test_region_rows_truth_flags_and_error_rows(ray_local, tmp_path, checkpoint) -> None:
    bad = {"image_id": "broken", "image": b"not a png", "label": 0, "split": "val"}
    images = _table(tmp_path, {"val": 6}, [bad])
    out = tmp_path / "run"
    assert job.main(_args(out, checkpoint, images)) == 0
    table = pq.read_table(out / "regions.parquet").to_pandas()
    assert sorted(table["image_id"].unique()) == ["broken"] + [f"val-{i:06d}" for i in range(6)]
    err = table[table["image_id"] == "broken"]
    assert err["status"].iloc[0] == "error" and err["error"].iloc[0]
    ok = table[table["status"] == "ok"]
    assert (ok.groupby("image_id").size() == 5).all()  # the whole image + 4 quadrants
    assert len(ok["embedding"].iloc[0]) > 0 and np.allclose(
        np.linalg.norm(np.stack(ok["embedding"]), axis=1), 1
    )
    assert np.allclose(np.stack(ok["scores"]).sum(1), 1, atol=1e-5)
    assert (ok["rle"] == "").all()  # grid cells are boxes: no mask
    for i in range(6):
        row = sample_rows(GRID, "val", i)[0]
        mine = ok[(ok["image_id"] == row["image_id"]) & (ok["kind"] == "region")].sort_values("region_id")
        assert mine["truth"].tolist() == [q == row["marker_region"] for q in range(4)]
        assert [list(b) for b in mine["box"]] == [
            [0, 0, 16, 16],
            [16, 0, 32, 16],
            [0, 16, 16, 32],
            [16, 16, 32, 32],
        ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["n_error_rows"] == 1 and summary["images"] == 7


def test_sigkill_half_way_then_rerun_embeds_only_the_rest(kill_half_way, tmp_path, checkpoint) -> None:
    images = _table(tmp_path, {"val": 24})
    out = tmp_path / "run"
    args = [*_args(out, checkpoint, images), "compute.batch_size=2"]
    kill_half_way(["regions", *args], out / "regions", at_least=2)
    store = ShardStore(str(out / "regions"), job.REGION_SCHEMA)
    killed = store.done_ids()
    assert 0 < len(killed) < 24, len(killed)
    shards = set(store.files())
    assert job.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["already_done"] == len(killed) and summary["images"] == 24 - len(killed)
    new = [f for f in store.files() if f not in shards]
    new_ids = set(pq.read_table(new, columns=["image_id"]).column("image_id").to_pylist()) if new else set()
    assert not new_ids & killed
    table = pq.read_table(out / "regions.parquet").to_pandas()
    assert len(table) == 24 * 5 and not table.duplicated(["image_id", "region_id"]).any()


def test_discover_writes_ranked_clusters_flags_and_figures(ray_local, tmp_path, checkpoint) -> None:
    images = _table(tmp_path, {"val": 24, "train": 12})
    assert job.main(_args(tmp_path / "regions", checkpoint, images)) == 0
    regions = str(tmp_path / "regions" / "regions.parquet")
    out = tmp_path / "discover"
    argv = ["--out", str(out), f"regions={regions}", f"images={images}", "track=false", "figure_regions=4"]
    assert discover_job.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 6 <= metrics["k"] < 15 and metrics["n_points"] == 24 * 4
    assert 0.0 <= metrics["precision_at_k"] <= 1.0
    clusters = pd.read_parquet(out / "clusters.parquet")
    assert clusters["rank"].tolist() == list(range(len(clusters))) and clusters["size"].sum() == 96
    flags = pd.read_parquet(out / "flags.parquet")
    assert len(flags) == 36 * 4 and set(flags["split"]) == {"val", "train"}
    top = int(clusters["cluster"].iloc[0])
    assert (flags["spurious"] == (flags["cluster"] == top)).all()
    members = pd.read_parquet(out / "members.parquet")
    first = members[members["rank"] == 0].sort_values("order")
    assert first["similarity"].is_monotonic_decreasing
    assert (out / "figures" / "cluster_0.png").is_file() and "cluster_0.png" in (
        out / "report.md"
    ).read_text()
    # the image-level baseline clusters whole images
    base = tmp_path / "image_level"
    assert discover_job.main([*argv[:1], str(base), *argv[2:], "level=image"]) == 0
    assert json.loads((base / "metrics.json").read_text())["n_points"] == 24


def test_mask_regions_keep_their_masks_and_the_background_region(checkpoint) -> None:
    from unspur.actors.region_embedder import RegionEmbedder
    from unspur.config import RegionSourceConfig
    from unspur.masks import decode, encode

    row = sample_rows(GRID, "val", 0)[0]
    part = np.zeros((32, 32), bool)
    part[4:12, 6:20] = True
    source = RegionSourceConfig(
        source="masks", masks="masks.parquet", background=True, truth_column="marker_rle"
    )
    embed = RegionEmbedder(checkpoint, source.model_dump(), threads=1)
    batch = {
        k: np.asarray([row[k]], dtype=object) for k in ("image_id", "image", "label", "split", "marker_rle")
    }
    out = pd.DataFrame(embed({**batch, "mask_rles": np.asarray([json.dumps([encode(part)])], dtype=object)}))
    assert out["name"].tolist() == ["image", "mask_0", "background"]
    assert out["rle"].iloc[0] == ""  # the whole image is a box
    np.testing.assert_array_equal(decode(json.loads(out["rle"].iloc[1])), part)
    np.testing.assert_array_equal(decode(json.loads(out["rle"].iloc[2])), ~part)
