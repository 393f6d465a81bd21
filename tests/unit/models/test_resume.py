"""Resumable training state (unspur.models.resume): a round trip restores weights, optimizer,
scheduler and RNG; a checkpoint of another objective is refused, more epochs are allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unspur.config import FinetuneConfig
from unspur.models import CheckpointError, build_model
from unspur.models.resume import TRAIN_STATE, check_resumable, restore_state, write_state
from unspur.training import make_optimizer, make_scheduler


def _cfg(**train) -> FinetuneConfig:
    return FinetuneConfig.model_validate(
        {
            "out": "x",
            "model": {
                "num_classes": 4,
                "img_size": 32,
                "kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2},
            },
            "train": {"epochs": 2, **train},
        }
    )


def _parts(cfg: FinetuneConfig):
    model = build_model(cfg.model)
    optimizer = make_optimizer(model, cfg.train)
    return model, optimizer, make_scheduler(optimizer, cfg.train, 4)


def test_round_trip_restores_everything(tmp_path: Path) -> None:
    cfg = _cfg()
    model, optimizer, scheduler = _parts(cfg)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    scheduler.step()
    write_state(tmp_path, cfg, model, optimizer, scheduler, extra={"epoch": 0, "history": []})
    assert (tmp_path / TRAIN_STATE).is_file()
    expected_rng = torch.get_rng_state()
    torch.manual_seed(123)
    fresh, fresh_opt, fresh_sched = _parts(cfg)
    extra = restore_state(tmp_path, cfg, fresh, fresh_opt, fresh_sched)
    assert extra["epoch"] == 0
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    assert fresh_sched.state_dict()["last_epoch"] == scheduler.state_dict()["last_epoch"]
    assert fresh_opt.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    assert torch.equal(torch.get_rng_state(), expected_rng)


def test_other_objective_is_refused_more_epochs_are_not(tmp_path: Path) -> None:
    cfg = _cfg()
    model, optimizer, scheduler = _parts(cfg)
    write_state(tmp_path, cfg, model, optimizer, scheduler, extra={"epoch": 0})
    check_resumable(tmp_path, _cfg(epochs=5))  # extending a finished run
    with pytest.raises(CheckpointError, match="different train"):
        check_resumable(tmp_path, _cfg(lr=0.5))
