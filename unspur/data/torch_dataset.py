"""A torch Dataset over the image table joined with the masks table, and the few-shot split.

Rows of the image table carry ``image_id``, ``image`` (encoded bytes) or ``path``, ``label`` and
optionally ``group``. Masks come from the masks table (``image_id, concept, rle, status``) or,
for SpuriousWorld, its parts table (``image_id, part, rle``); an image's training mask is the
union of all its ``ok`` masks. A mask whose size differs from the image is resized (nearest);
one whose aspect ratio differs cannot be placed and becomes an error row (``dataset.errors``)
while the image trains without a mask (``has_mask`` False), so no image is dropped silently.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from unspur.concept_bank import spurious_captions
from unspur.data.images import ImageError, decode_rgb
from unspur.masks import decode, resize_mask
from unspur.spurious_templates import pick_template

__all__ = [
    "DEFAULT_FIELDS",
    "FIELDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "REGION_FIELDS",
    "ImageMaskDataset",
    "few_shot",
    "load_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ASPECT_TOL = 0.02
#: the region entries (RaVL's region-aware loss); they need ``region_flags``
REGION_FIELDS = (
    "regions",
    "region_spurious",
    "region_tied",
    "region_valid",
    "erased",
    "erased_tied",
    "pasted",
    "pasted_tied",
)
#: what an item can hold besides image_id and group
FIELDS = ("image", "label", "mask", "has_mask", "tokens", "spurious_tokens", *REGION_FIELDS)
#: donors tried per image for a pasted view before it goes without one
_PASTE_TRIES = 8
#: what it holds unless asked otherwise (no caption tokens)
DEFAULT_FIELDS = ("image", "label", "mask", "has_mask")


def load_image(row: Mapping[str, Any]) -> np.ndarray:
    """Decode one image-table row (``image`` bytes or ``path``) -> (H, W, 3) uint8 RGB.

    Raises :class:`~unspur.data.images.ImageError` (a ValueError) naming the row and the problem.
    """
    try:
        return decode_rgb(row.get("image"), row.get("path"))
    except ImageError as err:
        raise ImageError(f"image row {row.get('image_id')!r}: {err}") from None


def _isna(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _mask_rows(masks_df: Any) -> dict[str, list[Mapping[str, Any]]]:
    """image_id -> its usable RLEs (status ok, or no status column, i.e. a parts table)."""
    if masks_df is None:
        return {}
    cols = set(masks_df.columns)
    if "rle" not in cols or "image_id" not in cols or not ({"concept", "part"} & cols):
        raise ValueError(
            f"masks table needs columns image_id, rle and concept (masks table) or part (parts table); "
            f"got {sorted(cols)}"
        )
    by_id: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    status = masks_df["status"] if "status" in cols else None
    for i, (image_id, rle) in enumerate(zip(masks_df["image_id"], masks_df["rle"], strict=True)):
        if status is not None and status.iloc[i] != "ok":
            continue
        if rle is None or _isna(rle):
            continue
        by_id[str(image_id)].append(rle)
    return dict(by_id)


class ImageMaskDataset(Dataset):
    """Image-table rows as tensors, each with the union of its concept masks.

    Item: ``image`` (3, S, S) float normalised with ``mean``/``std``, ``label`` int, ``group`` str
    (empty if the table has none), ``image_id`` str, ``mask`` (S, S) float {0, 1}, ``has_mask``
    bool (False when the image has no usable mask: it then skips the alignment terms), ``tokens``
    (L,) int64: the row's ``caption_column`` through ``tokenizer`` (a callable mapping a list of
    captions to (N, L) token ids, e.g. the clip family's ``tokenizer(cfg)``), ``spurious_tokens``
    (L,) int64: one StarFT spurious caption of the sample, a template of ``spurious_templates``
    (``{class}`` placeholder) picked by a hash of the image id (the same every epoch and run,
    :func:`unspur.spurious_templates.pick_template`) with the row's ``class_name`` filled in.
    ``train_aug`` flips image and mask horizontally with probability 0.5. ``view_id`` str: the
    image id plus ``"|flip"`` when flipped - the item's pixels are a function of it (the clip family
    caches a frozen teacher's image features by it). ``fields``: the entries an item holds besides
    ``image_id``, ``view_id`` and ``group`` (a loss's ``batch_keys``; default
    :data:`DEFAULT_FIELDS`); without ``mask`` and ``has_mask`` no mask is decoded; ``tokens``
    needs ``tokenizer`` and the caption column; ``spurious_tokens`` needs ``tokenizer``,
    ``spurious_templates`` and a ``class_name`` column.

    Regions (RaVL's region-aware loss) need ``region_flags``, a table of ``image_id``,
    ``region_id``, ``box`` ([x0, y0, x1, y1] in the stored image's pixels), ``spurious`` (bool)
    and ``tied_class`` (int, -1 = none), e.g. ``unspur discover``'s ``flags.parquet``: ``regions``
    (R, 3, S, S) the region views (never flipped): ``region_view`` ``crop``, the box cut out and
    resized (:func:`unspur.regions.region_tensor`), or ``in_place``, the whole image with every
    pixel outside the box zeroed (the region where it lies, at the image's scale),
    ``region_spurious`` (R,) bool, ``region_tied`` (R,) int64, ``region_valid`` (R,) bool; R is the
    most regions any image has, shorter lists padded with zero views that are not valid;
    ``erased`` (3, S, S) the image with every spurious region's box zeroed (flipped with the image)
    and ``erased_tied`` () int64 the class its spurious regions are tied to (-1: none, then
    ``erased`` is the image). With ``region_paste`` an image without a spurious region gets a
    counterfactual: ``pasted`` (3, S, S) the image with the pixels of a spurious region of
    another image of the table (the donor, drawn with torch's RNG like the flip) copied in at the
    donor's box, where the box overlaps none of the image's own flagged regions (up to
    8 donors are tried), and ``pasted_tied`` () int64 the donor region's tied class (-1 when
    ``region_paste`` is off, the image has no flags or a spurious region of its own, or no donor
    fits; then ``pasted`` is zeros).
    """

    def __init__(
        self,
        images_df: Any,
        masks_df: Any = None,
        img_size: int = 64,
        train_aug: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        cache: bool = True,
        fields: Collection[str] = DEFAULT_FIELDS,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        caption_column: str = "caption",
        spurious_templates: Sequence[str] | None = None,
        region_flags: Any = None,
        region_view: str = "crop",
        region_paste: bool = False,
    ) -> None:
        if img_size <= 0:
            raise ValueError(f"img_size must be > 0, got {img_size}")
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ValueError(
                f"ImageMaskDataset yields {list(FIELDS)}, not {unknown}; a loss reading those needs a "
                "dataset that provides them"
            )
        if "tokens" in fields and tokenizer is None:
            raise ValueError("the tokens field needs a tokenizer (the model family's tokenizer)")
        if "tokens" in fields and caption_column not in images_df.columns:
            raise ValueError(
                f"tokens are read from the image table's {caption_column!r} column, which it lacks "
                f"(columns: {sorted(images_df.columns)}); add captions or pick caption_column"
            )
        if "spurious_tokens" in fields:
            if tokenizer is None or not spurious_templates:
                raise ValueError("the spurious_tokens field needs a tokenizer and spurious_templates")
            if "class_name" not in images_df.columns:
                raise ValueError(
                    "spurious captions fill the image table's class_name column into templates; "
                    f"the table lacks it (columns: {sorted(images_df.columns)})"
                )
        if region_view not in ("crop", "in_place"):
            raise ValueError(f"region_view must be crop or in_place, got {region_view!r}")
        if set(REGION_FIELDS) & set(fields) and region_flags is None:
            raise ValueError(
                "the region fields need region_flags (image_id, region_id, box, spurious, tied_class: "
                "the flags.parquet of `unspur discover`); set data.regions"
            )
        missing = {"image_id", "label"} - set(images_df.columns)
        if missing:
            raise ValueError(f"image table lacks columns {sorted(missing)}; got {sorted(images_df.columns)}")
        self.rows = images_df.reset_index(drop=True).to_dict("records")
        self.img_size = img_size
        self.train_aug = train_aug
        self.fields = tuple(f for f in FIELDS if f in fields)
        self.with_mask = "mask" in fields or "has_mask" in fields
        self.tokenizer = tokenizer
        self.caption_column = caption_column
        self.spurious_templates = tuple(spurious_templates or ())
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._masks = _mask_rows(masks_df)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, bool]] | None = {} if cache else None
        self._tokens: dict[str, torch.Tensor] = {}  # caption -> tokens: a run has few distinct captions
        self.errors: list[dict[str, str]] = []
        self._error_ids: set[str] = set()
        self._regions, self.max_regions = _region_rows(region_flags)
        self.region_view = region_view
        self.region_paste = region_paste
        index_of = {str(r["image_id"]): i for i, r in enumerate(self.rows)}
        self._donors = [  # (row index, box, tied class) of every spurious region of this table
            (index_of[image_id], box, tied)
            for image_id, regions in sorted(self._regions.items())
            if image_id in index_of
            for box, is_spurious, tied in regions
            if is_spurious and tied >= 0
        ]
        self._sizes: dict[int, tuple[int, int]] = {}  # stored image size, to scale region boxes

    def spurious_caption(self, index: int) -> str:
        """Row ``index``'s spurious caption (its template by image id, its class filled in)."""
        row = self.rows[index]
        template = pick_template(self.spurious_templates, str(row["image_id"]))
        return spurious_captions([template], str(row["class_name"]))[0]

    def __len__(self) -> int:
        return len(self.rows)

    def _tokenize(self, caption: str) -> torch.Tensor:
        """(L,) tokens of ``caption``, each distinct caption tokenized once."""
        if caption not in self._tokens:
            self._tokens[caption] = self.tokenizer([caption])[0]
        return self._tokens[caption]

    @property
    def n_no_mask(self) -> int:
        """Images without a usable mask (no mask rows, all empty, or an aspect error)."""
        return sum(1 for i in range(len(self)) if not self._load(i)[2])

    def _union_mask(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        for rle in self._masks.get(image_id, []):
            mask = decode(rle)
            if mask.shape != shape:
                (mh, mw), (h, w) = mask.shape, shape
                if abs(mh / mw - h / w) > _ASPECT_TOL * (h / w):
                    raise ValueError(
                        f"mask of image {image_id!r} is {mh}x{mw} but the image is {h}x{w}: the aspect "
                        "ratios differ, so it cannot be resized onto the image; recompute the mask"
                    )
                mask = resize_mask(mask, shape)
            out |= mask
        return out

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, bool]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        row = self.rows[index]
        image_id = str(row["image_id"])
        image = load_image(row)
        self._sizes[index] = image.shape[:2]
        if image.shape[:2] != (self.img_size, self.img_size):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((self.img_size,) * 2, Image.BILINEAR))
        try:
            mask = (
                self._union_mask(image_id, image.shape[:2])
                if self.with_mask
                else np.zeros(image.shape[:2], bool)
            )
        except ValueError as err:
            if image_id not in self._error_ids:
                self._error_ids.add(image_id)
                self.errors.append({"image_id": image_id, "error": str(err)})
            mask = np.zeros(image.shape[:2], dtype=bool)
        item = (image, mask, bool(mask.any()))
        if self._cache is not None:
            self._cache[index] = item
        return item

    def _region_items(self, index: int, image: np.ndarray) -> dict[str, torch.Tensor]:
        """The region entries of item ``index`` from its (S, S, 3) stored-then-resized image."""
        from unspur.regions import Region, region_tensor

        r_max = max(self.max_regions, 1)
        own = self._regions.get(str(self.rows[index]["image_id"]), [])
        crops = torch.zeros(r_max, 3, self.img_size, self.img_size)
        spurious, tied = torch.zeros(r_max, dtype=torch.bool), torch.full((r_max,), -1, dtype=torch.int64)
        valid = torch.zeros(r_max, dtype=torch.bool)
        erased, erased_tied = image.copy(), -1
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        boxes = [self._scaled(index, box, image.shape[:2]) for box, _, _ in own]
        for r, (scaled, (_, is_spurious, tied_class)) in enumerate(zip(boxes, own, strict=True)):
            if self.region_view == "in_place":  # the whole image, zero outside the box
                inside = np.zeros(image.shape[:2], dtype=bool)
                inside[scaled[1] : scaled[3], scaled[0] : scaled[2]] = True
                region = Region((0, 0, image.shape[1], image.shape[0]), inside)
            else:
                region = Region(scaled)
            crops[r] = region_tensor(image, region, self.img_size, mean, std)
            spurious[r], tied[r], valid[r] = is_spurious, tied_class, True
            if is_spurious and tied_class >= 0:
                erased[scaled[1] : scaled[3], scaled[0] : scaled[2]] = 0
                erased_tied = tied_class if erased_tied < 0 else erased_tied
        erased_pixels = torch.from_numpy(erased).permute(2, 0, 1).float() / 255.0  # already S x S
        pasted, pasted_tied = torch.zeros(3, self.img_size, self.img_size), -1
        if self.region_paste and own and not any(is_spurious for _, is_spurious, _ in own):
            found = self._paste(image, boxes)
            if found is not None:
                pixels, pasted_tied = found
                pasted = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0 - self.mean) / self.std
        return {
            "regions": crops,
            "region_spurious": spurious,
            "region_tied": tied,
            "region_valid": valid,
            "erased": (erased_pixels - self.mean) / self.std,
            "erased_tied": torch.tensor(erased_tied, dtype=torch.int64),
            "pasted": pasted,
            "pasted_tied": torch.tensor(pasted_tied, dtype=torch.int64),
        }

    def _scaled(self, index: int, box: Sequence[int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Region ``box`` of row ``index`` (stored image pixels) in the S x S item's pixels."""
        h, w = self._sizes.get(index, shape[:2])
        sx, sy = self.img_size / w, self.img_size / h
        x0, y0, x1, y1 = box
        return (
            int(x0 * sx),
            int(y0 * sy),
            max(int(x0 * sx) + 1, round(x1 * sx)),
            max(int(y0 * sy) + 1, round(y1 * sy)),
        )

    def _paste(
        self, image: np.ndarray, own: list[tuple[int, int, int, int]]
    ) -> tuple[np.ndarray, int] | None:
        """(image with a donor's spurious region pasted in, its tied class), or None when none of
        the donors tried has a box clear of ``own`` (the image's regions, item pixels)."""
        for _ in range(min(_PASTE_TRIES, len(self._donors))):  # the image itself is no donor
            donor, box, tied = self._donors[int(torch.randint(len(self._donors), ()))]
            donor_image = self._load(donor)[0]
            x0, y0, x1, y1 = self._scaled(donor, box, donor_image.shape[:2])
            if any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in own):
                continue
            out = image.copy()
            out[y0:y1, x0:x1] = donor_image[y0:y1, x0:x1]
            return out, tied
        return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask, has_mask = self._load(index)
        row = self.rows[index]
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
        msk = torch.from_numpy(mask.astype(np.float32))
        flipped = self.train_aug and bool(torch.rand(()) < 0.5)
        if flipped:
            img, msk = img.flip(-1), msk.flip(-1)
        group = row.get("group")
        item = {
            "image": (img - self.mean) / self.std,
            "label": int(row["label"]),
            "group": "" if group is None or _isna(group) else str(group),
            "image_id": str(row["image_id"]),
            "view_id": f"{row['image_id']}|flip" if flipped else str(row["image_id"]),
            "mask": msk,
            "has_mask": has_mask,
        }
        if "tokens" in self.fields:
            item["tokens"] = self._tokenize(str(row[self.caption_column]))
        if "spurious_tokens" in self.fields:
            item["spurious_tokens"] = self._tokenize(self.spurious_caption(index))
        if set(REGION_FIELDS) & set(self.fields):
            item.update(self._region_items(index, image))
            if flipped:
                item["erased"] = item["erased"].flip(-1)
                item["pasted"] = item["pasted"].flip(-1)
        return {k: v for k, v in item.items() if k in self.fields or k in ("group", "image_id", "view_id")}


def _region_rows(flags: Any) -> tuple[dict[str, list[tuple[tuple[int, ...], bool, int]]], int]:
    """image_id -> [(box, spurious, tied_class)] by region id, and the most regions of an image."""
    if flags is None:
        return {}, 0
    missing = {"image_id", "region_id", "box", "spurious", "tied_class"} - set(flags.columns)
    if missing:
        raise ValueError(f"region flags lack columns {sorted(missing)}; got {sorted(flags.columns)}")
    by_id: dict[str, list[tuple[tuple[int, ...], bool, int]]] = defaultdict(list)
    for row in flags.sort_values(["image_id", "region_id"]).itertuples(index=False):
        by_id[str(row.image_id)].append(
            (tuple(int(v) for v in row.box), bool(row.spurious), int(row.tied_class))
        )
    return dict(by_id), max((len(v) for v in by_id.values()), default=0)


def few_shot(images_df: Any, per_class: int = 3, class_fraction: float = 0.5, seed: int = 0) -> Any:
    """The few-shot training subset: ``per_class`` images from each of a random fraction of classes.

    ``round(class_fraction * n_classes)`` classes (at least one) are drawn with ``seed``, then
    ``per_class`` images of each, uniformly. Returns the selected rows (a DataFrame, index reset),
    sorted by class then image_id. Raises ValueError if a chosen class has too few images.
    """
    if per_class <= 0:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if not 0.0 < class_fraction <= 1.0:
        raise ValueError(f"class_fraction must lie in (0, 1], got {class_fraction}")
    rng = np.random.default_rng(seed)
    labels = sorted(int(v) for v in images_df["label"].unique())
    n_pick = max(1, int(round(class_fraction * len(labels))))
    chosen = sorted(int(c) for c in rng.choice(labels, size=n_pick, replace=False))
    picked = []
    for label in chosen:
        rows = images_df[images_df["label"] == label].sort_values("image_id")
        if len(rows) < per_class:
            raise ValueError(
                f"class {label} has {len(rows)} images but few-shot asks for {per_class}; lower per_class"
            )
        idx = rng.choice(len(rows), size=per_class, replace=False)
        picked.append(rows.iloc[np.sort(idx)])
    import pandas as pd

    return pd.concat(picked).reset_index(drop=True)
