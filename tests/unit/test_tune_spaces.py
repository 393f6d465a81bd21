import random
from pathlib import Path

import pytest

from unspur.config import ConfigError, StrictModel
from unspur.tune_spaces import SPACES_DIR, grid_points, load_space, sample_point, validate_point


class Loss(StrictModel):
    lambda_concept: float = 0.5
    lambda_cls: float = 0.2


class Train(StrictModel):
    lr: float = 1e-4
    epochs: int = 2


class Job(StrictModel):
    loss: Loss = Loss()
    train: Train = Train()
    relevance: str = "rollout"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", sorted(SPACES_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_spaces_load_and_sample(path: Path):
    space = load_space(path)
    point = sample_point(space, random.Random(0))
    assert set(point) == set(space.params)


def test_validate_point_applies_and_rejects_unknown():
    cfg = validate_point(Job(), {"loss.lambda_cls": 0.7, "train.lr": 3e-4})
    assert cfg.loss.lambda_cls == 0.7 and cfg.train.lr == 3e-4
    with pytest.raises(ConfigError, match="unknown parameter.*loss.lambda_nope"):
        validate_point(Job(), {"loss.lambda_nope": 1.0})
    with pytest.raises(ConfigError, match="train.epochs"):
        validate_point(Job(), {"train.epochs": "many"})


def test_impossible_range_and_unknown_type(tmp_path: Path):
    bad = _write(
        tmp_path, "method: cft\nparams:\n  train.lr: {type: loguniform, low: 1.0e-3, high: 1.0e-4}\n"
    )
    with pytest.raises(ConfigError, match="impossible range"):
        load_space(bad)
    bad = _write(tmp_path, "method: cft\nparams:\n  train.lr: {type: normal, low: 0, high: 1}\n")
    with pytest.raises(ConfigError, match="train.lr"):
        load_space(bad)


def test_test_metric_rejected(tmp_path: Path):
    path = _write(
        tmp_path, "method: cft\nmetric: test_wga\nparams:\n  train.lr: {type: choice, values: [0.1]}\n"
    )
    with pytest.raises(ConfigError, match="validation metric"):
        load_space(path)


def test_grid_points(tmp_path: Path):
    path = _write(
        tmp_path,
        "method: cft\nsearch: grid\nparams:\n  train.lr: {type: grid, values: [0.1, 0.2]}\n"
        "  loss.lambda_cls: {type: grid, values: [1, 2, 3]}\n",
    )
    points = grid_points(load_space(path))
    assert len(points) == 6 and {"train.lr": 0.2, "loss.lambda_cls": 3} in points


def test_grid_order_is_shuffled_under_asha_unless_the_space_says_given(tmp_path: Path):
    grid = "method: cft\nsearch: grid\nparams:\n  train.lr: {type: grid, values: [0.1, 0.2]}\n"
    assert load_space(_write(tmp_path, grid + "scheduler: {name: asha}\n")).grid_order == "shuffled"
    assert load_space(_write(tmp_path, grid + "scheduler: {name: fifo}\n")).grid_order == "given"
    given = _write(tmp_path, grid + "order: given\nscheduler: {name: asha}\n")
    assert load_space(given).grid_order == "given"
    random_space = "method: cft\nparams:\n  train.lr: {type: choice, values: [0.1]}\n"
    assert load_space(_write(tmp_path, random_space)).grid_order is None
    with pytest.raises(ConfigError, match="order applies to search: grid"):
        load_space(_write(tmp_path, random_space + "order: shuffled\n"))


def test_promotion_asha_needs_points_listed_ahead(tmp_path: Path):
    head = "method: cft\nparams:\n  train.lr: {type: loguniform, low: 0.001, high: 0.1}\n"
    promotion = "scheduler: {name: asha, variant: promotion}\n"
    assert load_space(_write(tmp_path, head + promotion)).promotes
    assert not load_space(_write(tmp_path, head + "scheduler: {name: asha}\n")).promotes
    assert not load_space(_write(tmp_path, head + "scheduler: {name: fifo, variant: promotion}\n")).promotes
    with pytest.raises(ConfigError, match="variant promotion starts trials from points listed ahead"):
        load_space(_write(tmp_path, head + "search: optuna\n" + promotion))
