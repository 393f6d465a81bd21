"""Dataset adapters on tiny fixtures built here: Parquet table, ImageNet-S folder, Waterbirds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unspur.data.adapters import ADAPTERS, DatasetError, load_dataset
from unspur.data.encoding import encode_png
from unspur.masks import decode, encode


def _png(value: int = 0, size: int = 8) -> bytes:
    return encode_png(np.full((size, size, 3), value, dtype=np.uint8))


def _table(n: int = 4) -> pd.DataFrame:
    classes = ["cat", "dog"]
    return pd.DataFrame(
        {
            "image_id": [f"im{i}" for i in range(n)],
            "image": [_png(i) for i in range(n)],
            "label": [i % 2 for i in range(n)],
            "class_name": [classes[i % 2] for i in range(n)],
            "split": ["train", "test"] * (n // 2),
        }
    )


def test_registry_names():
    assert sorted(ADAPTERS) == ["imagefolder_masks", "parquet", "waterbirds"]
    with pytest.raises(DatasetError, match="unknown dataset adapter 'csv'"):
        load_dataset("csv", "x")


def test_parquet_table_split_groups_and_masks(tmp_path):
    _table().to_parquet(tmp_path / "images.parquet")
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:5] = True
    pd.DataFrame({"image_id": ["im1", "im2"], "part": ["ear", "ear"], "rle": [encode(mask)] * 2}).to_parquet(
        tmp_path / "parts.parquet"
    )
    ds = load_dataset("parquet", tmp_path / "images.parquet", masks=tmp_path / "parts.parquet", split="test")
    assert ds.classes == ["cat", "dog"]
    assert ds.images.image_id.tolist() == ["im1", "im3"]
    assert ds.images.group.tolist() == ["dog", "dog"]  # no group column: filled with class_name
    assert ds.masks.image_id.tolist() == ["im1"]  # masks of the other split are dropped with it
    assert decode(ds.masks.rle[0]).sum() == 6


def test_parquet_synth_folder_uses_meta_and_parts(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "parts").mkdir()
    _table().to_parquet(tmp_path / "images" / "a.parquet")
    pd.DataFrame({"image_id": ["im0"], "part": ["ear"], "rle": [encode(np.ones((8, 8), bool))]}).to_parquet(
        tmp_path / "parts" / "a.parquet"
    )
    (tmp_path / "meta.json").write_text(json.dumps({"classes": ["cat", "dog", "cow"]}))
    ds = load_dataset("parquet", tmp_path)
    assert ds.classes == ["cat", "dog", "cow"] and len(ds.images) == 4 and len(ds.masks) == 1


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda df: df.drop(columns=["label", "split"]), r"lacks required columns \['label', 'split'\]"),
        (lambda df: df.drop(columns=["image"]), "'image' \\(bytes\\) or a 'path'"),
        (lambda df: df.iloc[:0], "empty"),
        (lambda df: df.assign(image_id="same"), "repeated"),
        (lambda df: df.assign(label=[0, 1, 5, 1]), r"labels \[5\] lie outside the class list"),
        (lambda df: df.assign(class_name="cat"), "not classes\\[label\\]"),
    ],
)
def test_parquet_bad_tables(tmp_path, change, match):
    change(_table()).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(DatasetError, match=match):
        load_dataset("parquet", tmp_path / "t.parquet", classes=["cat", "dog"])


def test_parquet_missing_file_and_unknown_split(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("parquet", tmp_path / "nope.parquet")
    _table().to_parquet(tmp_path / "t.parquet")
    with pytest.raises(
        DatasetError, match=r"no rows of split 'val'; the splits present are \['test', 'train'\]"
    ):
        load_dataset("parquet", tmp_path / "t.parquet", split="val")
    with pytest.raises(DatasetError, match="allowed"):
        load_dataset("parquet", tmp_path / "t.parquet", colour="red")


def _imagenet_s(tmp_path):
    for name in ("goldfish", "shark"):
        (tmp_path / "img" / name).mkdir(parents=True)
        (tmp_path / "seg" / name).mkdir(parents=True)
        Image.new("RGB", (6, 4), (9, 9, 9)).save(tmp_path / "img" / name / f"{name}_1.jpg")
    Image.new("RGB", (6, 4)).save(tmp_path / "img" / "shark" / "shark_2.png")
    seg = np.zeros((4, 6, 3), np.uint8)
    seg[0, :2] = (2, 0, 0)  # id 2 = shark (classes sorted: goldfish=1, shark=2)
    seg[1, :3] = (1000 % 256, 1000 // 256, 0)  # 1000 = ignore
    seg[3, 5] = (44, 1, 0)  # id 300: not one of our classes
    Image.fromarray(seg).save(tmp_path / "seg" / "shark" / "shark_1.png")
    return tmp_path


def test_imagefolder_masks_decodes_imagenet_s_ids(tmp_path):
    root = _imagenet_s(tmp_path)
    adapter = ADAPTERS["imagefolder_masks"](root=root / "img", masks=root / "seg", split="val")
    ds = adapter.load()
    assert ds.classes == ["goldfish", "shark"]
    assert ds.images.image_id.tolist() == ["goldfish/goldfish_1", "shark/shark_1", "shark/shark_2"]
    assert ds.images.label.tolist() == [0, 1, 1] and set(ds.images.split) == {"val"}
    by_concept = {r.concept: decode(r.rle) for r in ds.masks.itertuples()}
    assert sorted(by_concept) == ["category_300", "shark"]
    assert by_concept["shark"].sum() == 2 and by_concept["shark"][0, :2].all()
    assert by_concept["category_300"][3, 5] and by_concept["category_300"].sum() == 1
    assert adapter.n_without_mask == 2


def test_imagefolder_errors(tmp_path):
    root = _imagenet_s(tmp_path)
    with pytest.raises(DatasetError, match=r"class folders \['shark'\] are not in the class list"):
        load_dataset("imagefolder_masks", root / "img", classes=["goldfish"])
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_dataset("imagefolder_masks", tmp_path / "empty")
    with pytest.raises(DatasetError, match="mask folder .* does not exist"):
        load_dataset("imagefolder_masks", root / "img", masks=tmp_path / "nope")


def _waterbirds(tmp_path, rows):
    for name, *_ in rows:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    pd.DataFrame(rows, columns=["img_filename", "y", "place", "split"]).to_csv(
        tmp_path / "metadata.csv", index=False
    )
    return tmp_path


def test_waterbirds_groups_and_splits(tmp_path):
    root = _waterbirds(
        tmp_path, [("001.A/a.jpg", 0, 0, 0), ("002.B/b.jpg", 1, 0, 0), ("002.B/c.jpg", 1, 1, 2)]
    )
    ds = load_dataset("waterbirds", root)
    assert ds.classes == ["landbird", "waterbird"]
    assert ds.images.group.tolist() == ["landbird/land", "waterbird/land", "waterbird/water"]
    assert ds.images.split.tolist() == ["train", "train", "test"]
    test = load_dataset("waterbirds", root, split="test", read_bytes=True)
    assert (
        test.images.image_id.tolist() == ["002.B/c.jpg"] and test.images.image[0][:4] == b"\xff\xd8\xff\xe0"
    )


def test_waterbirds_errors(tmp_path):
    with pytest.raises(DatasetError, match="metadata .*metadata.csv does not exist"):
        load_dataset("waterbirds", tmp_path)
    root = _waterbirds(tmp_path, [("a.jpg", 0, 0, 0), ("b.jpg", 2, 0, 1)])
    with pytest.raises(DatasetError, match=r"column 'y' has values \[2\] outside \[0, 1\]"):
        load_dataset("waterbirds", root)
    pd.DataFrame({"img_filename": ["a.jpg"], "y": [0]}).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match=r"lacks required columns \['place', 'split'\]"):
        load_dataset("waterbirds", root)
    pd.DataFrame({"img_filename": ["gone.jpg"], "y": [0], "place": [1], "split": [0]}).to_csv(
        root / "metadata.csv", index=False
    )
    with pytest.raises(DatasetError, match="1 image files listed are missing"):
        load_dataset("waterbirds", root)
    pd.DataFrame(columns=["img_filename", "y", "place", "split"]).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match="empty"):
        load_dataset("waterbirds", root)
