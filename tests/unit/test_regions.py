"""Region crops against hand boxes; grid cells; mask boxes; the background region; ground-truth overlap; blank regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unspur.data.digits_grid import quadrant_boxes
from unspur.regions import (
    Region,
    background_region,
    crop_region,
    drop_blank,
    grid_boxes,
    grid_regions,
    mask_box,
    mask_regions,
    region_mask,
    region_tensor,
    truth_overlap,
)


def test_grid_boxes_by_hand():
    assert grid_boxes(4, 6, 2) == [(0, 0, 3, 2), (3, 0, 6, 2), (0, 2, 3, 4), (3, 2, 6, 4)]
    assert grid_boxes(9, 9, 3)[4] == (3, 3, 6, 6)
    assert [list(b) for b in grid_boxes(64, 64, 2)] == quadrant_boxes(64)  # digits-grid's quadrants
    assert [r.name for r in grid_regions(4, 4, 2)] == ["cell_0_0", "cell_0_1", "cell_1_0", "cell_1_1"]
    with pytest.raises(ValueError, match="grid"):
        grid_boxes(4, 4, 5)


def test_crop_of_a_box_and_of_a_mask():
    image = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    crop = crop_region(image, Region((2, 1, 5, 4)))
    np.testing.assert_array_equal(crop, image[1:4, 2:5])
    mask = np.zeros((6, 8), bool)
    mask[1, 2] = mask[3, 4] = True
    region = mask_regions([mask])[0]
    assert region.box == (2, 1, 5, 4) and mask_box(mask) == (2, 1, 5, 4)
    crop = crop_region(image, region)
    expected = np.zeros((3, 3, 3), np.uint8)
    expected[0, 0], expected[2, 2] = image[1, 2], image[3, 4]
    np.testing.assert_array_equal(crop, expected)  # outside the mask zeroed


def test_empty_masks_and_bad_boxes():
    assert mask_box(np.zeros((4, 4), bool)) is None
    assert mask_regions([np.zeros((4, 4), bool), np.ones((4, 4), bool)], min_pixels=2)[0].name == "mask_1"
    with pytest.raises(ValueError, match="outside"):
        crop_region(np.zeros((4, 4, 3), np.uint8), Region((2, 2, 6, 3)))


def test_region_tensor_resizes_and_normalises():
    image = np.full((8, 8, 3), 255, np.uint8)
    x = region_tensor(image, Region((0, 0, 4, 4)), 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x, torch.ones_like(x))


def test_truth_overlap():
    quadrant = region_mask(Region((0, 0, 4, 4)), (8, 8))
    rect = np.zeros((8, 8), bool)
    rect[1:3, 1:3] = True
    assert truth_overlap(quadrant, rect) == 1.0  # the whole rectangle lies in the quadrant
    rect[1:3, 3:5] = True
    assert truth_overlap(quadrant, rect) == pytest.approx(6 / 8)  # columns 1..4: 6 of 8 pixels inside
    assert truth_overlap(quadrant, np.zeros((8, 8), bool)) == 0.0


def test_blank_regions_are_dropped_and_an_all_blank_image_has_none():
    from unspur.actors.region_embedder import image_regions

    image = np.zeros((8, 8, 3), np.uint8)
    image[1, 5] = 200  # one pixel in the top-right cell
    image[4:8, 0:4] = 90  # a uniform (blank) bottom-left cell, not black
    cells = grid_regions(8, 8, 2)
    assert [r.name for r in drop_blank(image, cells, 1.0)] == ["cell_0_1"]
    assert len(drop_blank(image, cells, 1000.0)) == 0
    source = {"source": "grid", "grid": 2, "blank_std": 1.0}
    assert [r.name for r in image_regions(image, source)] == ["cell_0_1"]
    assert len(image_regions(image, {**source, "blank_std": None})) == 4  # None keeps every cell
    image[5, 1] = 255  # a bright pixel in the uniform cell ...
    mask = np.zeros((8, 8), bool)
    mask[4:8, 0:4] = True
    mask[5, 1] = False  # ... inside the mask's box but outside the mask: not counted
    assert drop_blank(image, mask_regions([mask]), 1.0) == []
    assert len(drop_blank(image, mask_regions([mask | ~mask]), 1.0)) == 1


def test_the_background_region_is_what_no_mask_covers():
    import json

    from unspur.actors.region_embedder import image_regions
    from unspur.config import RegionSourceConfig
    from unspur.masks import encode

    head, wing = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    head[1:3, 1:3] = True
    wing[2:6, 3:5] = True
    rest = background_region([head, wing], (8, 8))
    assert rest.name == "background" and rest.box == (0, 0, 8, 8)
    np.testing.assert_array_equal(rest.mask, ~(head | wing))
    assert int(rest.mask.sum()) == 64 - 4 - 8
    assert background_region([head | ~head], (8, 8)) is None  # everything covered
    assert background_region([head], (8, 8), min_pixels=61) is None  # 60 pixels left
    image = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    source = RegionSourceConfig(source="masks", masks="m.parquet", min_pixels=1, background=True).model_dump()
    rles = json.dumps([encode(head), encode(wing)])
    found = image_regions(image, source, rles)
    assert [r.name for r in found] == ["mask_1", "mask_0", "background"]  # parts largest first, then the rest
    np.testing.assert_array_equal(found[-1].mask, rest.mask)
    assert [r.name for r in image_regions(image, {**source, "max_regions": 1}, rles)] == [
        "mask_1",
        "background",
    ]
    assert "background" not in [r.name for r in image_regions(image, {**source, "background": False}, rles)]
    with pytest.raises(ValueError, match="needs regions.source masks"):
        RegionSourceConfig(source="grid", background=True)
