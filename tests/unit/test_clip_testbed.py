"""The CLIP test bed's model caches: a hit gives the weights training would, without training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unspur import clip_testbed
from unspur.clip_testbed import STARFT_PIPELINE, fine_tuned_model, pretrained_model, recipe, stage_world
from unspur.data.spuriousworld import generate_tables

TINY = [
    "pretrain_data.spuriousworld.n_train=32",
    "pretrain_data.spuriousworld.image_size=32",
    "pretrain.model.img_size=32",
    "pretrain.train.batch_size=16",
    "pretrain.train.epochs=1",
]
CLASSES = ("bird", "airplane", "bicycle", "tree")


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_cached_pretraining_is_read_back_and_keyed_by_recipe_and_seed(tmp_path: Path, monkeypatch) -> None:
    torch.set_num_threads(1)
    stages = recipe(STARFT_PIPELINE, TINY, ("pretrain_data", "pretrain"))
    fresh, cfg = pretrained_model(stages, 0, CLASSES)
    cached, _ = pretrained_model(stages, 0, CLASSES, tmp_path)
    assert _same(fresh, cached) and list(cfg.classes) == list(CLASSES)
    assert len(list(tmp_path.glob("pretrained-seed0-*.pt"))) == 1

    def no_training(*_args, **_kwargs):
        pytest.fail("a cache hit trained again")

    monkeypatch.setattr(clip_testbed, "train_stage", no_training)
    hit, _ = pretrained_model(stages, 0, CLASSES, tmp_path)
    assert _same(hit, fresh)
    other = recipe(STARFT_PIPELINE, [*TINY, "pretrain.train.lr=0.01"], ("pretrain_data", "pretrain"))
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        pretrained_model(other, 0, CLASSES, tmp_path)  # another recipe: a miss
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        pretrained_model(stages, 1, CLASSES, tmp_path)  # another seed: a miss


FLYP_TINY = [
    *TINY,
    "data.spuriousworld.n_train=32",
    "data.spuriousworld.n_val=16",
    "data.spuriousworld.image_size=32",
    "flyp.train.batch_size=16",
    "flyp.train.epochs=1",
]


def test_a_cached_fine_tuning_is_read_back_with_its_epoch(tmp_path: Path, monkeypatch) -> None:
    torch.set_num_threads(1)
    stages = recipe(STARFT_PIPELINE, FLYP_TINY, ("pretrain_data", "data", "pretrain", "flyp"))
    images, _ = generate_tables(stage_world(stages["data"], 0), splits=("train", "val"))
    train, val = (images[images["split"] == s] for s in ("train", "val"))
    fresh, cfg = pretrained_model(stages, 0, CLASSES)
    epoch = fine_tuned_model(fresh, cfg, stages, "flyp", 0, train, val)
    cached, _ = pretrained_model(stages, 0, CLASSES, tmp_path)
    assert fine_tuned_model(cached, cfg, stages, "flyp", 0, train, val, tmp_path) == epoch
    assert _same(fresh, cached) and len(list(tmp_path.glob("flyp-seed0-*.pt"))) == 1

    def no_training(*_args, **_kwargs):
        pytest.fail("a cache hit trained again")

    monkeypatch.setattr(clip_testbed, "train_stage", no_training)
    hit, _ = pretrained_model(stages, 0, CLASSES, tmp_path)
    assert fine_tuned_model(hit, cfg, stages, "flyp", 0, train, val, tmp_path) == epoch and _same(hit, fresh)
    other = recipe(
        STARFT_PIPELINE, [*FLYP_TINY, "flyp.train.lr=0.01"], ("pretrain_data", "data", "pretrain", "flyp")
    )
    with pytest.raises(pytest.fail.Exception, match="trained again"):
        fine_tuned_model(hit, cfg, other, "flyp", 0, train, val, tmp_path)  # another recipe: a miss
