"""Dataset adapters: every source becomes the image table (and optionally a masks table).

One interface, :class:`DatasetAdapter` (``load() -> LoadedDataset``), and a name-keyed registry
:data:`ADAPTERS` whose names are the config vocabulary:

- ``parquet``: an image table in Parquet (a file, a folder of shards, or a ``unspur data synth``
  output folder, whose ``images/`` and ``parts/`` are then used).
- ``imagefolder_masks``: ``root/<class>/<image>.{jpg,jpeg,png}`` with ImageNet-S style masks
  ``masks/<class>/<stem>.png``: pixel value ``R + 256 * G`` is a category id (0 =
  background, 1000 = ignore), by default ``class_ids[c] = position of c in classes + 1``.
- ``waterbirds``: ``root/metadata.csv`` (``img_filename, y, place, split``), groups
  ``"landbird/land"`` ...

Image table (ARCHITECTURE.md): ``image_id`` (unique str), ``image`` (bytes) or ``path``,
``label`` (int, index into ``classes``), ``class_name``, ``group`` (filled with ``class_name``
when the source has none), ``split``. Masks table: ``image_id``, ``concept`` or ``part``, ``rle``.
Every adapter takes the dataset location (``path`` / ``root``) and ``masks``, ``classes``,
``split``. Bad input raises :class:`DatasetError` naming the file and what to fix.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

__all__ = [
    "ADAPTERS",
    "DatasetAdapter",
    "DatasetError",
    "ImageFolderMasksAdapter",
    "LoadedDataset",
    "ParquetAdapter",
    "WaterbirdsAdapter",
    "check_image_table",
    "check_masks_table",
    "load_dataset",
    "sort_rows",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IGNORE_ID = 1000
REQUIRED_IMAGE_COLUMNS = ("image_id", "label", "class_name", "split")


class DatasetError(ValueError):
    """A dataset cannot be used as given; the message names the input and the fix."""


@dataclass
class LoadedDataset:
    """An adapter's output: the image table, an optional masks table and the class list."""

    images: pd.DataFrame
    masks: pd.DataFrame | None
    classes: list[str]


class DatasetAdapter(Protocol):
    """What every adapter provides."""

    def load(self) -> LoadedDataset: ...


def _require_path(path: str | Path, what: str, is_dir: bool | None = None) -> Path:
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{what} {path} does not exist; check the path")
    if is_dir is True and not path.is_dir():
        raise DatasetError(f"{what} {path} is not a folder")
    return path


def _classes_from_table(df: pd.DataFrame, source: str) -> list[str]:
    pairs = df[["label", "class_name"]].drop_duplicates()
    if pairs["label"].duplicated().any() or pairs["class_name"].duplicated().any():
        raise DatasetError(
            f"{source}: labels and class names do not map one to one: "
            f"{sorted(map(tuple, pairs.to_numpy().tolist()))}"
        )
    names = dict(zip(pairs["label"].astype(int), pairs["class_name"].astype(str), strict=True))
    if sorted(names) != list(range(len(names))):
        raise DatasetError(
            f"{source}: labels {sorted(names)} are not 0..K-1; pass the class list (classes=[...])"
        )
    return [names[i] for i in range(len(names))]


def check_image_table(df: pd.DataFrame, source: str, classes: Sequence[str] | None = None) -> list[str]:
    """Validate an image table (without changing it); return its class list.

    Raises DatasetError for: no rows, missing columns (named), neither ``image`` nor ``path``,
    duplicate ``image_id``, non-integer labels, labels outside ``classes`` or class names that
    disagree with ``classes[label]``.
    """
    missing = [c for c in REQUIRED_IMAGE_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"{source}: image table lacks required columns {missing}; has {list(df.columns)}")
    if "image" not in df.columns and "path" not in df.columns:
        raise DatasetError(
            f"{source}: image table needs an 'image' (bytes) or a 'path' column; has {list(df.columns)}"
        )
    if len(df) == 0:
        raise DatasetError(f"{source}: the dataset is empty (0 rows)")
    dups = df["image_id"][df["image_id"].duplicated()].unique().tolist()
    if dups:
        raise DatasetError(f"{source}: image_id must be unique; repeated: {dups[:5]}")
    if not pd.api.types.is_integer_dtype(df["label"]):
        raise DatasetError(f"{source}: column 'label' must hold integers, got dtype {df['label'].dtype}")
    if classes is None:
        return _classes_from_table(df, source)
    classes = list(classes)
    bad = sorted(set(df["label"][(df["label"] < 0) | (df["label"] >= len(classes))].tolist()))
    if bad:
        raise DatasetError(
            f"{source}: labels {bad} lie outside the class list {classes} (0..{len(classes) - 1})"
        )
    expected = np.asarray(classes, dtype=object)[df["label"].to_numpy()]
    wrong = df["class_name"].astype(str).to_numpy() != expected
    if wrong.any():
        row = df[wrong].iloc[0]
        raise DatasetError(
            f"{source}: {int(wrong.sum())} rows have a class_name that is not classes[label], e.g. "
            f"image {row['image_id']!r}: label {row['label']} is {classes[row['label']]!r} in "
            f"{classes} but class_name is {row['class_name']!r}"
        )
    return classes


def check_masks_table(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Validate a masks table (``image_id``, ``concept`` or ``part``, ``rle``); return it."""
    missing = [c for c in ("image_id", "rle") if c not in df.columns]
    if not {"concept", "part"} & set(df.columns):
        missing.append("concept (or part)")
    if missing:
        raise DatasetError(f"{source}: masks table lacks required columns {missing}; has {list(df.columns)}")
    return df


def _finish(
    images: pd.DataFrame, masks: pd.DataFrame | None, classes: list[str], split: str | None, source: str
) -> LoadedDataset:
    if "group" not in images.columns:
        images = images.assign(group=images["class_name"])
    if split is not None:
        splits = sorted(images["split"].astype(str).unique())
        if split not in splits:
            raise DatasetError(f"{source}: no rows of split {split!r}; the splits present are {splits}")
        images = images[images["split"] == split].reset_index(drop=True)
        if masks is not None:
            masks = masks[masks["image_id"].isin(set(images["image_id"]))].reset_index(drop=True)
    return LoadedDataset(images.reset_index(drop=True), masks, classes)


def sort_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Rows in ``image_id`` order (then ``concept`` / ``part``), index reset: a folder of shards
    comes back in the order Ray Data's tasks happened to finish, which must not reach training."""
    keys = [c for c in ("image_id", "concept", "part") if c in df.columns]
    return df.sort_values(keys, kind="stable").reset_index(drop=True) if keys else df


def _read_parquet(path: Path, what: str) -> pd.DataFrame:
    try:
        return sort_rows(pd.read_parquet(path))
    except Exception as err:  # pyarrow raises many types for unreadable input
        raise DatasetError(f"{what} {path} cannot be read as Parquet ({type(err).__name__}: {err})") from err


@dataclass
class ParquetAdapter:
    """An image table in Parquet; ``path`` a file, a folder of shards or a synth output folder."""

    path: str | Path
    masks: str | Path | None = None
    classes: Sequence[str] | None = None
    split: str | None = None

    def load(self) -> LoadedDataset:
        path = _require_path(self.path, "image table")
        masks_path = Path(self.masks) if self.masks is not None else None
        classes = list(self.classes) if self.classes is not None else None
        if path.is_dir() and (path / "meta.json").is_file() and (path / "images").is_dir():
            meta = json.loads((path / "meta.json").read_text())
            classes = classes if classes is not None else meta.get("classes")
            if masks_path is None and (path / "parts").is_dir():
                masks_path = path / "parts"
            path = path / "images"
        images = _read_parquet(path, "image table")
        classes = check_image_table(images, str(path), classes)
        masks = None
        if masks_path is not None:
            masks = check_masks_table(
                _read_parquet(_require_path(masks_path, "masks table"), "masks table"), str(masks_path)
            )
        return _finish(images, masks, classes, self.split, str(path))


def _mask_ids(path: Path) -> np.ndarray:
    """ImageNet-S mask PNG -> (H, W) int category ids (R + 256 * G; grayscale: the value)."""
    from PIL import Image

    with Image.open(path) as img:
        arr = np.asarray(img.convert("RGB") if img.mode in ("RGB", "RGBA", "P") else img)
    if arr.ndim == 3:
        return arr[..., 0].astype(np.int64) + 256 * arr[..., 1].astype(np.int64)
    return arr.astype(np.int64)


@dataclass
class ImageFolderMasksAdapter:
    """``root/<class>/<image>`` with ImageNet-S masks ``masks/<class>/<stem>.png``.

    ``split`` is the split name given to every image (a folder holds one split).

    Every image gets one row; each category id present in its mask (not 0, not 1000) becomes a
    masks-table row with ``concept`` = that class's name (``category_<id>`` for an id outside
    ``class_ids``). Images without a mask file have no masks rows (counted in ``n_without_mask``).
    """

    root: str | Path
    masks: str | Path | None = None
    classes: Sequence[str] | None = None
    split: str = "train"
    class_ids: dict[str, int] | None = None
    read_bytes: bool = False
    n_without_mask: int = field(default=0, init=False)

    def load(self) -> LoadedDataset:
        root = _require_path(self.root, "image folder", is_dir=True)
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        classes = list(self.classes) if self.classes is not None else found
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DatasetError(f"{root}: class folders {unknown} are not in the class list {classes}")
        rows = []
        for label, name in enumerate(classes):
            folder = root / name
            for file in sorted(folder.iterdir()) if folder.is_dir() else []:
                if file.suffix.lower() in IMAGE_SUFFIXES:
                    row = {
                        "image_id": f"{name}/{file.stem}",
                        "path": str(file),
                        "label": label,
                        "class_name": name,
                        "split": self.split,
                    }
                    if self.read_bytes:
                        row["image"] = file.read_bytes()
                    rows.append(row)
        if not rows:
            raise DatasetError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) under its class folders")
        images = pd.DataFrame(rows)
        check_image_table(images, str(root), classes)
        masks = self._masks(images, classes) if self.masks is not None else None
        return _finish(images, masks, classes, None, str(root))

    def _masks(self, images: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
        from unspur.masks import encode

        masks_root = _require_path(self.masks, "mask folder", is_dir=True)
        ids = self.class_ids if self.class_ids is not None else {c: i + 1 for i, c in enumerate(classes)}
        names = {v: k for k, v in ids.items()}
        rows = []
        for image_id in images["image_id"]:
            file = masks_root / f"{image_id}.png"
            if not file.is_file():
                continue
            cat = _mask_ids(file)
            for value in np.unique(cat):
                if value in (0, IGNORE_ID):
                    continue
                rows.append(
                    {
                        "image_id": image_id,
                        "concept": names.get(int(value), f"category_{int(value)}"),
                        "rle": encode(cat == value),
                        "status": "ok",
                    }
                )
        self.n_without_mask = len(images) - len({r["image_id"] for r in rows})
        return pd.DataFrame(rows, columns=["image_id", "concept", "rle", "status"])


_WATERBIRDS_CLASSES = ["landbird", "waterbird"]
_WATERBIRDS_PLACES = ["land", "water"]
_WATERBIRDS_SPLITS = {0: "train", 1: "val", 2: "test"}


@dataclass
class WaterbirdsAdapter:
    """Waterbirds: ``root/metadata.csv`` (img_filename, y, place, split) + the image files.

    label = y (0 landbird, 1 waterbird), background = place (0 land, 1 water), split 0/1/2 =
    train/val/test, group ``"<class>/<place>"``. ``masks`` optionally names a masks table;
    ``classes``, if given, must be the Waterbirds classes.
    """

    root: str | Path
    masks: str | Path | None = None
    classes: Sequence[str] | None = None
    split: str | None = None
    read_bytes: bool = False
    check_files: bool = True

    def load(self) -> LoadedDataset:
        root = _require_path(self.root, "Waterbirds folder", is_dir=True)
        if self.classes is not None and list(self.classes) != _WATERBIRDS_CLASSES:
            raise DatasetError(
                f"Waterbirds has the classes {_WATERBIRDS_CLASSES}; got classes={list(self.classes)}"
            )
        meta_path = _require_path(root / "metadata.csv", "Waterbirds metadata")
        meta = pd.read_csv(meta_path)
        missing = [c for c in ("img_filename", "y", "place", "split") if c not in meta.columns]
        if missing:
            raise DatasetError(f"{meta_path}: lacks required columns {missing}; has {list(meta.columns)}")
        if len(meta) == 0:
            raise DatasetError(f"{meta_path}: the dataset is empty (0 rows)")
        for col, allowed in (("y", (0, 1)), ("place", (0, 1)), ("split", tuple(_WATERBIRDS_SPLITS))):
            bad = sorted(set(meta[col].tolist()) - set(allowed))
            if bad:
                raise DatasetError(f"{meta_path}: column {col!r} has values {bad} outside {list(allowed)}")
        paths = [root / f for f in meta["img_filename"]]
        if self.check_files:
            absent = [str(p) for p in paths if not p.is_file()]
            if absent:
                raise DatasetError(
                    f"{meta_path}: {len(absent)} image files listed are missing, e.g. {absent[:3]}"
                )
        classes = np.asarray(_WATERBIRDS_CLASSES, dtype=object)[meta["y"].to_numpy()]
        places = np.asarray(_WATERBIRDS_PLACES, dtype=object)[meta["place"].to_numpy()]
        images = pd.DataFrame(
            {
                "image_id": meta["img_filename"].astype(str),
                "path": [str(p) for p in paths],
                "label": meta["y"].astype(int),
                "class_name": classes,
                "background": places,
                "group": [f"{c}/{p}" for c, p in zip(classes, places, strict=True)],
                "split": meta["split"].map(_WATERBIRDS_SPLITS),
            }
        )
        if self.read_bytes:
            images["image"] = [p.read_bytes() for p in paths]
        check_image_table(images, str(meta_path), _WATERBIRDS_CLASSES)
        masks = None
        if self.masks is not None:
            masks = check_masks_table(
                _read_parquet(_require_path(self.masks, "masks table"), "masks table"), str(self.masks)
            )
        return _finish(images, masks, list(_WATERBIRDS_CLASSES), self.split, str(meta_path))


#: adapter name -> constructor (keyword arguments as in each adapter's fields)
ADAPTERS: dict[str, Callable[..., DatasetAdapter]] = {
    "parquet": ParquetAdapter,
    "imagefolder_masks": ImageFolderMasksAdapter,
    "waterbirds": WaterbirdsAdapter,
}


def load_dataset(kind: str, path: str | Path, **options: Any) -> LoadedDataset:
    """Load a dataset with adapter ``kind`` (see :data:`ADAPTERS`); ``options`` go to the adapter."""
    if kind not in ADAPTERS:
        raise DatasetError(f"unknown dataset adapter {kind!r}; use one of {sorted(ADAPTERS)}")
    ctor = ADAPTERS[kind]
    first = "path" if kind == "parquet" else "root"
    try:
        adapter = ctor(**{first: path}, **options)
    except TypeError as err:
        fields = list(getattr(ctor, "__dataclass_fields__", {}))
        raise DatasetError(
            f"adapter {kind!r}: bad options {sorted(options)} ({err}); allowed: {fields}"
        ) from None
    return adapter.load()
