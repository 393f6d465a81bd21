from pathlib import Path

import pytest

from unspur.config import (
    ConfigError,
    StrictModel,
    dump_config,
    flatten,
    load_config,
    parse_overrides,
)


class Train(StrictModel):
    lr: float = 1e-3
    epochs: int = 2


class Job(StrictModel):
    out: str = "runs/x"
    train: Train = Train()
    classes: list[str] = ["bird", "tree"]


def test_defaults_without_file():
    cfg = load_config(Job)
    assert cfg.train.lr == 1e-3 and cfg.classes == ["bird", "tree"]


def test_yaml_and_overrides(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.5\n")
    cfg = load_config(Job, path, ["train.epochs=7", "classes=[a, b, c]"])
    assert cfg.train.lr == 0.5 and cfg.train.epochs == 7 and cfg.classes == ["a", "b", "c"]


def test_unknown_key_names_file_key_and_allowed(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lrr: 0.5\n")
    with pytest.raises(ConfigError) as err:
        load_config(Job, path)
    msg = str(err.value)
    assert str(path) in msg and "train.lrr" in msg and "lr, epochs" in msg


def test_wrong_type_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(Job, None, ["train.epochs=many"])


def test_missing_file_and_bad_override():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Job, "/nonexistent/c.yaml")
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["train.lr"])


def test_dump_roundtrip_and_flatten(tmp_path: Path):
    cfg = load_config(Job, None, ["train.lr=0.25"])
    path = dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Job, path) == cfg
    assert flatten(cfg)["train.lr"] == 0.25
