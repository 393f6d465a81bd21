"""digits-grid: exact Cramer's V, balanced eval splits, region ground truth, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from unspur.config import ConfigError, DigitsGridConfig, validate_config
from unspur.data import digits_grid as dg
from unspur.data.torch_dataset import load_image
from unspur.masks import decode


def test_cramers_v_hand_computed():
    # 2x2 table [[30, 10], [10, 30]]: chi2 = 80 * (30*30 - 10*10)^2 / (40^4) = 20 -> V = sqrt(20/80)
    x = [0] * 40 + [1] * 40
    y = [0] * 30 + [1] * 10 + [0] * 10 + [1] * 30
    assert dg.cramers_v(x, y) == pytest.approx(0.5)
    assert dg.cramers_v([0, 1, 0, 1], [1, 1, 1, 1]) == 0.0


@pytest.mark.parametrize("v", [0.0, 0.7, 0.9, 0.99, 1.0])
def test_marker_rates_reproduce_v(v):
    cfg = DigitsGridConfig(cramers_v=v)
    a, b = dg.marker_rates(cfg)
    pi = 0.1
    m = pi * a + (1 - pi) * b
    assert m == pytest.approx(pi)  # default marker_rate: the target class's share
    assert np.sqrt(pi * (1 - pi)) * abs(a - b) / np.sqrt(m * (1 - m)) == pytest.approx(v)


@pytest.mark.parametrize("v", [0.7, 0.8, 0.9, 0.95])
def test_generated_train_split_has_requested_v(v):
    cfg = DigitsGridConfig(cramers_v=v, n_train=2000)
    labels, markers = dg._plan(cfg, "train")
    assert np.bincount(labels).tolist() == [200] * 10
    assert dg.cramers_v(labels, markers) == pytest.approx(v, abs=0.01)


def test_unreachable_v_is_a_config_error():
    with pytest.raises(ConfigError, match="unreachable"):
        validate_config(
            DigitsGridConfig, {"digits": [1, 7], "target_digit": 7, "marker_rate": 0.3, "cramers_v": 0.8}
        )
    with pytest.raises(ConfigError, match="target_digit"):
        validate_config(DigitsGridConfig, {"digits": [1, 7], "target_digit": 3})


def test_rows_regions_and_determinism():
    cfg = DigitsGridConfig(n_train=40, n_val=40, n_test=8, image_size=32, cramers_v=0.9, seed=3)
    images, parts, regions = dg.generate_tables(cfg, splits=("train", "val"))
    assert len(images) == 80 and len(parts) == 80 and len(regions) == 320
    val = images[images.split == "val"]
    assert val.has_marker.sum() == pytest.approx(20, abs=1)  # eval_marker_rate 0.5, class-independent
    for row in images.itertuples():
        img = load_image({"image": row.image}).astype(int)
        assert img.shape == (32, 32, 3)
        red = (img[..., 0] > 150) & (img[..., 1] < 60)
        boxes = dg.quadrant_boxes(32)
        own = regions[regions.image_id == row.image_id].sort_values("region")
        assert own.has_digit.tolist() == [r == row.digit_region for r in range(4)]
        assert own.is_spurious.tolist() == [r == row.marker_region for r in range(4)]
        if row.has_marker:
            x0, y0, x1, y1 = boxes[row.marker_region]
            assert red[y0:y1, x0:x1].sum() == red.sum() > 0
            assert decode(row.marker_rle).sum() == red.sum()
            assert row.group.endswith("/marker")
        else:
            assert red.sum() == 0 and row.marker_region == -1 and row.group.endswith("/no_marker")
            assert not decode(row.marker_rle).any()
        digit = decode(row.object_rle)
        x0, y0, x1, y1 = boxes[row.digit_region]
        assert digit[y0:y1, x0:x1].sum() == digit.sum() > 0
        assert row.class_name in row.caption
    again, _, _ = dg.generate_tables(cfg, splits=("train", "val"))
    assert again.equals(images)
    other, _, _ = dg.generate_tables(cfg.model_copy(update={"seed": 4}), splits=("train",))
    assert not other.image.equals(images[images.split == "train"].image.reset_index(drop=True))


def test_rows_carry_class_and_descriptive_captions() -> None:
    cfg = DigitsGridConfig(image_size=32, n_train=20, n_val=4, n_test=4)
    rows = [dg.sample_rows(cfg, "train", i)[0] for i in range(20)]
    for row in rows:
        assert row["class_name"] in row["caption"]
        marker = "with a red rectangle" if row["has_marker"] else "on black"
        assert row["caption_descriptive"] == f"a photo of the digit {row['class_name']} {marker}."
    assert {r["has_marker"] for r in rows} == {True, False}
    with pytest.raises(ConfigError, match="caption_templates"):
        validate_config(DigitsGridConfig, {"caption_templates": ["the digit {digit}"]})
