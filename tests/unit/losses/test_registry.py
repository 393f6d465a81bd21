"""A loss registered in a test (its own config class) loads from YAML through FinetuneConfig."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field

from unspur.config import ConfigError, FinetuneConfig, load_config
from unspur.losses import LOSSES, LossConfig, register_loss


class ToyLossConfig(LossConfig):
    name: Literal["toy"] = "toy"
    weight: float = Field(1.0, ge=0)


@pytest.fixture
def toy_loss():
    @register_loss("toy", ToyLossConfig)
    def toy(*, logits, labels, cfg, **_):
        return {"loss": logits.sum() * cfg.weight}

    yield toy
    LOSSES.unregister("toy")


def test_registered_loss_loads_from_yaml(tmp_path, toy_loss):
    path = tmp_path / "c.yaml"
    path.write_text("loss: {name: toy, weight: 0.5}\n")
    cfg = load_config(FinetuneConfig, path)
    assert isinstance(cfg.loss, ToyLossConfig) and cfg.loss.weight == 0.5 and cfg.loss.kl_weight == 0.0
    assert LOSSES[cfg.loss.name].fn is toy_loss
    with pytest.raises(ConfigError, match="loss.weight"):
        load_config(FinetuneConfig, path, ["loss.weight=-1"])
    with pytest.raises(ConfigError, match="loss.lambda_align"):  # a cft weight is not a toy key
        load_config(FinetuneConfig, path, ["loss.lambda_align=0.3"])


def test_unknown_loss_lists_registered(tmp_path, toy_loss):
    with pytest.raises(
        ConfigError, match=r"unknown loss 'focal'; registered: cft, erm, flyp, ravl, robustvit, starft, toy"
    ):
        load_config(FinetuneConfig, None, ["loss.name=focal"])
    assert LossConfig(name="toy").weight == 1.0
