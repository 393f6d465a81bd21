"""Checkpoints round-trip weights + config and refuse another architecture clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unspur.config import ModelConfig, StrictModel
from unspur.models import (
    MODELS,
    CheckpointError,
    build_model,
    load_checkpoint,
    load_weights,
    read_extra,
    save_checkpoint,
)

SMALL = {"depth": 1, "embed_dim": 32, "num_heads": 2}


class _Job(StrictModel):
    out: str = "x"
    model: ModelConfig = ModelConfig()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip(name: str, tmp_path: Path) -> None:
    cfg = ModelConfig(name=name, num_classes=3, img_size=32, kwargs=SMALL)
    model = build_model(cfg).eval()
    save_checkpoint(tmp_path, model, _Job(model=cfg), extra={"epoch": 2})
    loaded, config = load_checkpoint(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    assert config["model"]["name"] == name and config["out"] == "x"
    assert read_extra(tmp_path) == {"epoch": 2}
    rebuilt = build_model(cfg.model_copy(update={"checkpoint": str(tmp_path)})).eval()
    torch.testing.assert_close(rebuilt(x), model(x))


def test_other_architecture_is_a_clear_error(tmp_path: Path) -> None:
    hybrid = ModelConfig(name="hybrid_tiny_synth", kwargs=SMALL)
    save_checkpoint(tmp_path, build_model(hybrid), hybrid)
    vit = ModelConfig(name="vit_tiny_synth", kwargs=SMALL)
    with pytest.raises(CheckpointError, match="holds hybrid_tiny_synth.*asks for vit_tiny_synth"):
        build_model(vit.model_copy(update={"checkpoint": str(tmp_path)}))
    wider = ModelConfig(name="hybrid_tiny_synth", kwargs={**SMALL, "embed_dim": 64})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(build_model(wider), tmp_path, wider)
    with pytest.raises(CheckpointError, match="num_classes=4.*num_classes=7"):
        load_weights(
            build_model(hybrid.model_copy(update={"num_classes": 7})),
            tmp_path,
            hybrid.model_copy(update={"num_classes": 7}),
        )


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not an unspur checkpoint"):
        load_checkpoint(tmp_path)
