"""``unspur data synth`` end to end on the local Ray: statistics, determinism, bad flags."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from unspur.data.digits_grid import cramers_v
from unspur.masks import decode
from unspur.workflows.synth import job as synth


def _read(folder, sort):
    return pd.read_parquet(folder).sort_values(sort).reset_index(drop=True)


def test_issue_command_holds_its_statistics(ray_local, tmp_path):
    # the issue's command with smaller val / test splits: rows are rendered per (seed, split, index),
    # so the train split is exactly the one of `--n-train 2000 --rho 0.95 --seed 0`
    out = tmp_path / "sw"
    argv = [
        "--out",
        str(out),
        "--n-train",
        "2000",
        "--rho",
        "0.95",
        "--seed",
        "0",
        "--n-val",
        "32",
        "--n-test",
        "160",
    ]
    assert synth.main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    images = pd.read_parquet(out / "images")
    assert meta["counts"] == {"train": 2000, "val": 32, "test": 160}
    assert len(images) == 2192 and images.image_id.is_unique
    train = images[images.split == "train"]
    on_own_background = np.mean(
        train.background.to_numpy() == np.asarray(meta["config"]["backgrounds"])[train.label.to_numpy()]
    )
    assert meta["train_cooccurrence"] == pytest.approx(on_own_background)
    assert abs(on_own_background - 0.95) <= 0.03
    test_counts = images[images.split == "test"].group.value_counts()
    assert len(test_counts) == 16 and set(test_counts) == {10}  # balanced over every (class, background)
    parts = pd.read_parquet(out / "parts")
    assert len(parts) == 3 * len(images)  # three named parts per object


def test_same_seed_identical_tables_digits_grid(ray_local, tmp_path):
    argv = [
        "--kind",
        "digits_grid",
        "--n-train",
        "300",
        "--n-val",
        "40",
        "--n-test",
        "40",
        "--cramers-v",
        "0.9",
        "--seed",
        "1",
        "digits_grid.image_size=32",
        "rows_per_block=64",
    ]
    assert synth.main(["--out", str(tmp_path / "a"), *argv]) == 0
    assert synth.main(["--out", str(tmp_path / "b"), *argv]) == 0
    for table, sort in (
        ("images", ["image_id"]),
        ("parts", ["image_id", "part"]),
        ("regions", ["image_id", "region"]),
    ):
        a, b = _read(tmp_path / "a" / table, sort), _read(tmp_path / "b" / table, sort)
        pd.testing.assert_frame_equal(a, b)
    images, regions = (
        _read(tmp_path / "a" / "images", ["image_id"]),
        _read(tmp_path / "a" / "regions", ["image_id"]),
    )
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    train = images[images.split == "train"]
    assert meta["train_cramers_v"] == pytest.approx(cramers_v(train.label, train.has_marker))
    assert abs(meta["train_cramers_v"] - 0.9) <= 0.02
    assert len(regions) == 4 * len(images) and regions.groupby("image_id").is_spurious.sum().max() == 1
    spurious = regions[regions.is_spurious].set_index("image_id").region
    marked = images[images.has_marker].set_index("image_id").marker_region
    assert spurious.sort_index().equals(marked.sort_index())
    assert decode(images.marker_rle[images.has_marker.idxmax()]).any()
    assert meta["classes"][:3] == ["zero", "one", "two"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--kind", "digits_grid", "--rho", "0.9"], "--rho does not apply to kind 'digits_grid'"),
        (["--rho", "1.5"], "spuriousworld.rho: Input should be less than or equal to 1"),
        (["--classes", "bird,unicorn"], "unknown classes"),
        (["spuriousworld.colour=red"], "unknown key"),
    ],
)
def test_bad_flags_fail_before_ray(tmp_path, capsys, argv, match):
    assert synth.main(["--out", str(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err
