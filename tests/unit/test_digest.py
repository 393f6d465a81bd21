"""Config digests (unspur.digest): stable, order-free, salted, sized."""

from __future__ import annotations

from unspur.config import SpuriousWorldConfig
from unspur.digest import config_digest


def test_same_content_same_digest_whatever_the_key_order():
    assert config_digest({"a": 1, "b": [1, 2]}) == config_digest({"b": [1, 2], "a": 1})
    assert config_digest({"a": 1}) != config_digest({"a": 2})


def test_models_salt_and_length():
    cfg = SpuriousWorldConfig(n_train=8)
    assert config_digest(cfg) == config_digest(cfg.model_dump(mode="json"))
    assert config_digest(cfg) != config_digest(cfg.model_copy(update={"n_train": 9}))
    assert config_digest(cfg, salt="upstream") != config_digest(cfg)
    assert len(config_digest(cfg, 12)) == 12 and config_digest(cfg).startswith(config_digest(cfg, 12))
