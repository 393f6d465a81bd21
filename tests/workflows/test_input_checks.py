"""Inputs a job can check before it starts Ray are checked before: a missing checkpoint or table,
an image no model can take (1x1, 1x4000). Ray is made unstartable here; each job must fail with
one line and exit code 2 without reaching it."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unspur.config import ClipModelConfig, ModelConfig, SpuriousWorldConfig
from unspur.data.spuriousworld import generate_tables
from unspur.models import build_model, save_checkpoint
from unspur.workflows.adapt import job as adapt
from unspur.workflows.evaluate import job as evaluate
from unspur.workflows.finetune import job as finetune
from unspur.workflows.masks import job as masks
from unspur.workflows.sweep import job as sweep

REPO = Path(__file__).resolve().parents[2]


def _png(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def no_ray(monkeypatch):
    """Ray looks stopped and refuses to start: reaching ``ray.init`` fails the test."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("the job started Ray before checking its inputs")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """A SpuriousWorld image table, and the same table with one 1x4000 and one 1x1 image."""
    root = tmp_path_factory.mktemp("tables")
    images, parts = generate_tables(SpuriousWorldConfig(image_size=32, n_train=8, n_val=4, n_test=8))
    images.to_parquet(root / "good.parquet")
    parts.to_parquet(root / "parts.parquet")
    bad = images.copy()
    bad.loc[0, "image"], bad.loc[1, "image"] = _png(1, 4000), _png(1, 1)
    bad.to_parquet(root / "bad.parquet")
    cfg = ModelConfig(num_classes=4, img_size=32, kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2})
    save_checkpoint(root / "ckpt", build_model(cfg), cfg)
    return root, images


def test_evaluate_refuses_a_missing_checkpoint_before_ray(no_ray, tables, tmp_path, capsys):
    root, _ = tables
    argv = ["--out", str(tmp_path), "checkpoint=/missing", f"images={root / 'good.parquet'}"]
    assert evaluate.main(argv) == 2
    assert "/missing" in capsys.readouterr().err
    argv = ["--out", str(tmp_path), f"checkpoint={root / 'ckpt'}", f"images={root / 'nope.parquet'}"]
    assert evaluate.main(argv) == 2
    assert "nope.parquet" in capsys.readouterr().err


def test_adapt_refuses_a_missing_or_wrong_checkpoint_and_missing_tables_before_ray(
    no_ray, tables, tmp_path, capsys
):
    from unspur.models.families import get_family

    root, _ = tables
    clip_cfg = ClipModelConfig(img_size=32, classes=SpuriousWorldConfig().classes)
    save_checkpoint(tmp_path / "clip", get_family("clip").build(clip_cfg), clip_cfg)
    good = [f"images={root / 'good.parquet'}", f"masks={root / 'parts.parquet'}"]
    cases = [
        (["checkpoint=/missing", *good], "/missing"),
        ([f"checkpoint={root / 'ckpt'}", *good], "must be a clip-family model"),
        (
            [f"checkpoint={tmp_path / 'clip'}", f"images={root / 'nope.parquet'}", good[1]],
            "nope.parquet does not exist",
        ),
        (
            [f"checkpoint={tmp_path / 'clip'}", good[0], f"masks={root / 'nope.parquet'}"],
            "nope.parquet does not exist",
        ),
    ]
    for args, message in cases:
        assert adapt.main(["--out", str(tmp_path / "run"), *args, "track=false"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_masks_refuses_a_missing_table_before_ray(no_ray, tmp_path, capsys):
    argv = ["--out", str(tmp_path), f"images={tmp_path / 'nope.parquet'}", "concepts={bird: [beak]}"]
    argv += ["segmenter.name=clipseg", "segmenter.clipseg.model=tiny"]
    assert masks.main(argv) == 2
    assert "nope.parquet does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["timm", "clip"])
def test_finetune_refuses_unusable_images_before_ray_and_any_model(no_ray, tables, tmp_path, capsys, family):
    root, images = tables
    model = (
        ["loss.name=erm", "model.img_size=32", "model.kwargs={depth: 1, embed_dim: 32, num_heads: 2}"]
        if family == "timm"
        else ["--config", str(REPO / "workflows" / "configs" / "finetune_flyp.yaml")]
    )
    argv = [
        "--out",
        str(tmp_path),
        *model,
        "data.spuriousworld=null",
        f"data.images=[{root / 'bad.parquet'}]",
        "run.num_workers=2",
    ]
    assert finetune.main(argv) == 2
    err = capsys.readouterr().err
    first, second = images.image_id[0], images.image_id[1]
    assert re.search(r"error: 2 of \d+ training/evaluation images", err)
    assert f"{first}: image is 1x4000 px" in err and f"{second}: image is 1x1 px" in err
    assert "both sides >= 8 px" in err and not (tmp_path / "checkpoints").exists()


def test_sweep_refuses_unusable_images_before_ray(no_ray, tables, tmp_path, capsys):
    root, _ = tables
    argv = [
        "--config",
        str(REPO / "workflows" / "configs" / "sweep_synth.yaml"),
        "--out",
        str(tmp_path),
        "finetune.data.spuriousworld=null",
        f"finetune.data.images=[{root / 'bad.parquet'}]",
        f"finetune.data.masks={root / 'parts.parquet'}",
        "base=null",
    ]
    assert sweep.main(argv) == 2
    assert "image is 1x4000 px" in capsys.readouterr().err
