"""ImageMaskDataset (mask union, nearest resize, aspect errors, empty masks) and few_shot."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from unspur.data.torch_dataset import ImageMaskDataset, few_shot
from unspur.masks import encode


def _png(h: int, w: int, value: int = 128) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _images(n: int = 3, size: int = 16) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"im{i}" for i in range(n)],
            "image": [_png(size, size) for _ in range(n)],
            "label": list(range(n)),
            "group": [f"g{i}" for i in range(n)],
        }
    )


def _box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_is_the_union_of_ok_concept_masks():
    a, b, c = _box(16, 16, 0, 4, 0, 4), _box(16, 16, 10, 12, 10, 16), _box(16, 16, 6, 8, 6, 8)
    masks = pd.DataFrame(
        {
            "image_id": ["im0", "im0", "im0"],
            "concept": ["beak", "wing", "sky"],
            "rle": [encode(a), encode(b), encode(c)],
            "status": ["ok", "ok", "error"],
        }
    )
    ds = ImageMaskDataset(_images(), masks, img_size=16)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert np.array_equal(item["mask"].numpy() > 0, a | b)
    assert item["has_mask"] and item["label"] == 0 and item["group"] == "g0" and item["image_id"] == "im0"
    assert not ds[1]["has_mask"] and item["mask"].dtype == torch.float32
    assert float(ds[1]["mask"].sum()) == 0
    assert ds.n_no_mask == 2


def test_parts_table_is_accepted():
    parts = pd.DataFrame({"image_id": ["im2"], "part": ["wheel"], "rle": [encode(_box(16, 16, 2, 5, 2, 5))]})
    ds = ImageMaskDataset(_images(), parts, img_size=16)
    assert ds[2]["has_mask"] and float(ds[2]["mask"].sum()) == 9


def test_mask_of_another_size_is_resized_nearest():
    big = _box(32, 32, 0, 8, 0, 8)
    parts = pd.DataFrame({"image_id": ["im0"], "part": ["wing"], "rle": [encode(big)]})
    mask = ImageMaskDataset(_images(), parts, img_size=16)[0]["mask"].numpy()
    assert np.array_equal(mask > 0, _box(16, 16, 0, 4, 0, 4))


def test_image_is_resized_to_img_size_and_mask_follows():
    parts = pd.DataFrame({"image_id": ["im0"], "part": ["wing"], "rle": [encode(_box(16, 16, 0, 8, 0, 8))]})
    item = ImageMaskDataset(_images(), parts, img_size=8)[0]
    assert item["image"].shape == (3, 8, 8) and item["mask"].shape == (8, 8)
    assert float(item["mask"].sum()) == 16


def test_mask_with_another_aspect_becomes_an_error_row():
    parts = pd.DataFrame({"image_id": ["im1"], "part": ["wing"], "rle": [encode(np.ones((16, 8), bool))]})
    ds = ImageMaskDataset(_images(), parts, img_size=16)
    item = ds[1]
    assert not item["has_mask"] and float(item["mask"].sum()) == 0
    assert len(ds.errors) == 1 and ds.errors[0]["image_id"] == "im1"
    assert "aspect" in ds.errors[0]["error"]
    ds[1]
    assert len(ds.errors) == 1


def test_bad_tables_are_rejected_with_the_columns():
    with pytest.raises(ValueError, match="concept"):
        ImageMaskDataset(_images(), pd.DataFrame({"image_id": ["im0"], "rle": [None]}), img_size=16)
    with pytest.raises(ValueError, match="label"):
        ImageMaskDataset(_images().drop(columns="label"), None, img_size=16)


def test_augmentation_flips_image_and_mask_together():
    img = np.zeros((16, 16, 3), np.uint8)
    img[:, :4] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    images = pd.DataFrame({"image_id": ["a"], "image": [buf.getvalue()], "label": [0]})
    parts = pd.DataFrame({"image_id": ["a"], "part": ["p"], "rle": [encode(_box(16, 16, 0, 16, 0, 4))]})
    ds = ImageMaskDataset(images, parts, img_size=16, train_aug=True)
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        item = ds[0]
        bright = item["image"][0] > 0
        assert torch.equal(bright, item["mask"] > 0)
        seen.add(bool(item["mask"][0, 0]))
    assert seen == {True, False}


def _labelled(per_class: int, n_classes: int) -> pd.DataFrame:
    n = per_class * n_classes
    return pd.DataFrame(
        {"image_id": [f"x{i:03d}" for i in range(n)], "label": [i % n_classes for i in range(n)]}
    )


def test_few_shot_picks_per_class_images_from_a_fraction_of_classes():
    df = _labelled(10, 6)
    sub = few_shot(df, per_class=3, class_fraction=0.5, seed=1)
    counts = sub["label"].value_counts()
    assert len(counts) == 3 and set(counts) == {3}
    assert sub["image_id"].is_unique and set(sub["image_id"]) <= set(df["image_id"])
    assert few_shot(df, 3, 0.5, seed=1).equals(sub)
    picks = {tuple(few_shot(df, 3, 0.5, seed=s)["image_id"]) for s in range(5)}
    assert len(picks) > 1
    assert len(few_shot(df, per_class=2, class_fraction=0.01, seed=0)) == 2


def test_few_shot_errors():
    with pytest.raises(ValueError, match="lower per_class"):
        few_shot(_labelled(2, 2), per_class=3, class_fraction=1.0)
    with pytest.raises(ValueError, match="class_fraction"):
        few_shot(_labelled(2, 2), per_class=1, class_fraction=0.0)


def test_fields_hold_only_what_the_loss_reads_and_skip_mask_decoding(monkeypatch):
    masks = pd.DataFrame(
        {"image_id": ["im0"], "concept": ["beak"], "rle": [encode(_box(16, 16, 0, 4, 0, 4))]}
    )
    full = ImageMaskDataset(_images(), masks, img_size=16)[0]

    def no_decoding(rle):
        raise AssertionError("a mask was decoded for a loss that does not read masks")

    monkeypatch.setattr("unspur.data.torch_dataset.decode", no_decoding)
    item = ImageMaskDataset(_images(), masks, img_size=16, fields=("image", "label"))[0]
    assert set(item) == {"image", "label", "group", "image_id", "view_id"}
    assert torch.equal(item["image"], full["image"]) and item["label"] == full["label"]
    with pytest.raises(ValueError, match="tokens"):
        ImageMaskDataset(_images(), masks, img_size=16, fields=("image", "tokens"))
