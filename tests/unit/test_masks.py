"""unspur.masks: RLE round trips, unions, nearest resize, boxes, IoU, area (hand-computed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unspur import masks


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (64, 64), (33, 17)])
def test_rle_round_trip_random_empty_full(shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    for m in (rng.random(shape) > 0.5, np.zeros(shape, bool), np.ones(shape, bool)):
        rle = masks.encode(m)
        assert rle["size"] == list(shape) and isinstance(rle["counts"], str)
        json.dumps(rle)  # storable as text
        out = masks.decode(rle)
        assert out.dtype == bool and out.shape == shape and np.array_equal(out, m)


def test_decode_uncompressed_counts_column_major():
    # COCO counts alternate 0-runs and 1-runs over the column-major (Fortran) pixel order:
    # 2x3 with counts [1, 2, 3] sets pixels 1 and 2 of (0,0),(1,0),(0,1),(1,1),(0,2),(1,2)
    out = masks.decode({"size": [2, 3], "counts": [1, 2, 3]})
    assert out.tolist() == [[False, True, False], [True, False, False]]
    assert np.array_equal(masks.decode(masks.encode(out)), out)


def test_encode_and_decode_reject_bad_input():
    with pytest.raises(ValueError, match=r"\(H, W\) mask"):
        masks.encode(np.zeros((2, 2, 3), bool))
    with pytest.raises(ValueError, match="not a COCO RLE"):
        masks.decode({"counts": "abc"})


def test_union_and_union_rles():
    a = np.zeros((3, 3), bool)
    a[0, 0] = True
    b = np.zeros((3, 3), bool)
    b[2, 1:] = True
    u = masks.union([a, b], (3, 3))
    assert u.sum() == 3 and u[0, 0] and u[2, 1] and u[2, 2]
    assert not masks.union([], (2, 4)).any() and masks.union([], (2, 4)).shape == (2, 4)
    assert np.array_equal(masks.union_rles([masks.encode(a), masks.encode(b)], (3, 3)), u)
    with pytest.raises(ValueError, match="cannot join"):
        masks.union([a, np.zeros((2, 2), bool)], (3, 3))


def test_resize_mask_nearest():
    m = np.array([[1, 0], [0, 1]], bool)
    up = masks.resize_mask(m, (4, 4))
    assert up.tolist() == np.kron(m, np.ones((2, 2), int)).astype(bool).tolist()
    assert np.array_equal(masks.resize_mask(up, (2, 2)), m)
    wide = masks.resize_mask(m, (2, 6))
    assert wide.tolist() == [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]]
    same = masks.resize_mask(m, (2, 2))
    assert np.array_equal(same, m) and same is not m


def test_bbox_area_iou():
    m = np.zeros((6, 8), bool)
    m[1:3, 2:6] = True  # rows 1-2, cols 2-5
    assert masks.bbox(m) == [2, 1, 6, 3]
    assert masks.bbox(np.zeros((3, 3), bool)) == [0, 0, 0, 0]
    assert masks.area(m) == 8
    n = np.zeros((6, 8), bool)
    n[2:4, 4:8] = True  # overlaps m at row 2, cols 4-5: 2 px; union 8 + 8 - 2 = 14
    assert masks.iou(m, n) == pytest.approx(2 / 14)
    assert masks.iou(m, m) == 1.0
    assert masks.iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        masks.iou(m, np.zeros((2, 2), bool))
