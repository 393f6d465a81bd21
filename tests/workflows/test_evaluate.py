"""``unspur evaluate`` end to end on the local Ray against the in-process evaluation loop."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from unspur.config import ModelConfig, SpuriousWorldConfig
from unspur.data.spuriousworld import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset
from unspur.models import build_model, load_checkpoint, save_checkpoint
from unspur.training import evaluate as evaluate_loop
from unspur.workflows.evaluate import job as evaluate


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=4, img_size=32, kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    save_checkpoint(root / "ckpt", build_model(cfg), cfg)
    images, parts = generate_tables(SpuriousWorldConfig(image_size=32, n_train=4, n_val=4, n_test=32))
    images.to_parquet(root / "images.parquet")
    parts.to_parquet(root / "parts.parquet")
    return root, images, parts


def test_evaluate_matches_in_process_loop(ray_local, inputs, tmp_path):
    root, images, parts = inputs
    argv = [
        "--out",
        str(tmp_path),
        f"checkpoint={root / 'ckpt'}",
        f"images={root / 'images.parquet'}",
        f"masks={root / 'parts.parquet'}",
        "split=test",
        "batch_size=8",
        "track=false",
    ]
    assert evaluate.main(argv) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    pred = pd.read_parquet(tmp_path / "predictions.parquet")
    assert len(pred) == 32 and result["n"] == 32 and result["n_errors"] == 0

    test = images[images.split == "test"].reset_index(drop=True)
    model, _ = load_checkpoint(root / "ckpt")
    loader = DataLoader(ImageMaskDataset(test, parts, img_size=32), batch_size=8)
    expected = evaluate_loop(model, loader, with_relevance=True)
    assert result["acc"] == pytest.approx(expected["acc"])
    assert result["wga"] == pytest.approx(expected["wga"])
    assert result["per_group"] == pytest.approx(expected["per_group"])
    for key in ("mass_in", "iou", "pointing"):
        assert result[f"align_{key}"] == pytest.approx(expected[f"align_{key}"], abs=1e-5)
    assert set(result["group_sizes"]) == set(test.group) and sum(result["group_sizes"].values()) == 32


def test_bad_inputs_are_clear(ray_local, inputs, tmp_path, capsys):
    root, images, _ = inputs
    assert evaluate.main(["--out", str(tmp_path), "images=x.parquet"]) == 2
    assert "checkpoint" in capsys.readouterr().err  # required key missing, before Ray work
    bad = images.assign(label=images.label.where(images.index != 0, 9))
    bad.to_parquet(tmp_path / "bad.parquet")
    assert (
        evaluate.main(
            [
                "--out",
                str(tmp_path),
                f"checkpoint={root / 'ckpt'}",
                f"images={tmp_path / 'bad.parquet'}",
                "classes=[bird,airplane,bicycle,tree]",
                "track=false",
            ]
        )
        == 2
    )
    assert "labels [9] lie outside the class list" in capsys.readouterr().err
    assert (
        evaluate.main(
            [
                "--out",
                str(tmp_path),
                f"checkpoint={tmp_path / 'nope'}",
                f"images={root / 'images.parquet'}",
                "track=false",
            ]
        )
        == 2
    )
    assert "nope" in capsys.readouterr().err


def test_images_no_model_can_take_become_error_rows_with_the_rule(ray_local, inputs, tmp_path):
    import io

    from PIL import Image

    root, images, _ = inputs
    test = images[images.split == "test"].reset_index(drop=True)
    for i, (h, w) in enumerate([(1, 1), (1, 4000)]):
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, format="PNG")
        test.loc[i, "image"] = buf.getvalue()
    test.to_parquet(tmp_path / "odd.parquet")
    argv = ["--out", str(tmp_path), f"checkpoint={root / 'ckpt'}", f"images={tmp_path / 'odd.parquet'}"]
    assert evaluate.main([*argv, "relevance=null", "track=false"]) == 0
    pred = pd.read_parquet(tmp_path / "predictions.parquet").set_index("image_id")
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert len(pred) == 32 and result["n_errors"] == 2 and result["n"] == 30  # rows in == rows out
    assert "image is 1x1 px" in pred.loc[test.image_id[0], "error"]
    assert "image is 1x4000 px" in pred.loc[test.image_id[1], "error"]
    assert pred.loc[test.image_id[1], "pred"] == -1
