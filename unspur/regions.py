"""Candidate regions of an image (RaVL, METHODS.md 2.1): grid cells or mask regions, cropped.

A region is a box ``[x0, y0, x1, y1]`` in pixels (x1 / y1 exclusive, XYXY) and, for a mask
region, a (H, W) bool mask. :func:`crop_region` cuts the box out of an (H, W, 3) uint8 image and
zeroes the pixels outside the mask; :func:`region_tensor` resizes the crop to the model's input
(S, S) and normalises it like the model's images, so the CLIP image encoder embeds it as an image.

Ground truth: a region *holds* a feature whose mask is ``truth`` when
``|region & truth| / min(|region|, |truth|) >= min_overlap`` (:func:`truth_overlap`): a quadrant
that contains a whole small rectangle holds it (overlap 1), and so does a small region that lies
in a large background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "Region",
    "background_region",
    "crop_region",
    "drop_blank",
    "grid_boxes",
    "grid_regions",
    "mask_box",
    "mask_regions",
    "region_mask",
    "region_tensor",
    "truth_overlap",
]


@dataclass(frozen=True)
class Region:
    """One candidate region: ``box`` [x0, y0, x1, y1] (pixels, exclusive ends), ``mask`` (H, W)
    bool of the whole image or None (the box is the region), and its ``name``."""

    box: tuple[int, int, int, int]
    mask: np.ndarray | None = None
    name: str = ""


def grid_boxes(height: int, width: int, n: int) -> list[tuple[int, int, int, int]]:
    """The n x n grid cells of an image, row-major (top-left first); cell edges at
    ``round(i * side / n)`` so the cells tile the image exactly. For n = 2 these are the quadrants
    top_left, top_right, bottom_left, bottom_right."""
    if n < 1 or n > min(height, width):
        raise ValueError(f"grid {n} must be between 1 and the image's smaller side {min(height, width)}")
    xs = [round(i * width / n) for i in range(n + 1)]
    ys = [round(i * height / n) for i in range(n + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(n) for c in range(n)]


def drop_blank(image: np.ndarray, regions: Sequence[Region], max_std: float) -> list[Region]:
    """The regions whose pixels (inside the box, and inside the mask for a mask region) vary: a
    region whose pixel standard deviation over all channels is ``<= max_std`` (0-255 scale) is
    blank background (digits-grid's empty quadrants) and is dropped."""
    kept = []
    for region in regions:
        x0, y0, x1, y1 = region.box
        pixels = image[y0:y1, x0:x1].astype(np.float64)
        if region.mask is not None:
            pixels = pixels[region.mask[y0:y1, x0:x1]]
        if pixels.size and float(pixels.std()) > max_std:
            kept.append(region)
    return kept


def grid_regions(height: int, width: int, n: int) -> list[Region]:
    """:func:`grid_boxes` as regions named ``cell_<row>_<col>``."""
    return [Region(box, None, f"cell_{i // n}_{i % n}") for i, box in enumerate(grid_boxes(height, width, n))]


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The tight box [x0, y0, x1, y1] (exclusive ends) around a (H, W) mask; None if it is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def mask_regions(masks: Sequence[np.ndarray], min_pixels: int = 1) -> list[Region]:
    """One region per (H, W) mask with at least ``min_pixels`` pixels, named ``mask_<i>``."""
    regions = []
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        box = mask_box(mask)
        if box is not None and int(mask.sum()) >= min_pixels:
            regions.append(Region(box, mask, f"mask_{i}"))
    return regions


def background_region(
    masks: Sequence[np.ndarray], shape: tuple[int, int], min_pixels: int = 1
) -> Region | None:
    """What none of the (H, W) ``masks`` covers (the image's background when the masks are its
    object's parts), named ``background``; None when that is under ``min_pixels`` pixels."""
    covered = np.zeros(shape, dtype=bool)
    for mask in masks:
        covered |= np.asarray(mask, dtype=bool)
    rest = ~covered
    box = mask_box(rest)
    if box is None or int(rest.sum()) < min_pixels:
        return None
    return Region(box, rest, "background")


def region_mask(region: Region, shape: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool pixels of ``region`` (its mask, or its box filled)."""
    if region.mask is not None:
        return np.asarray(region.mask, dtype=bool)
    out = np.zeros(shape, dtype=bool)
    x0, y0, x1, y1 = region.box
    out[y0:y1, x0:x1] = True
    return out


def crop_region(image: np.ndarray, region: Region) -> np.ndarray:
    """(H, W, 3) uint8 image -> the (y1 - y0, x1 - x0, 3) crop of the region's box with every
    pixel outside its mask set to 0."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = region.box
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"region box {region.box} is empty or outside the {w}x{h} image")
    crop = image[y0:y1, x0:x1].copy()
    if region.mask is not None:
        if region.mask.shape != (h, w):
            raise ValueError(f"region mask {region.mask.shape} does not match the image {(h, w)}")
        crop[~np.asarray(region.mask, dtype=bool)[y0:y1, x0:x1]] = 0
    return crop


def region_tensor(
    image: np.ndarray, region: Region, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """The region's crop (:func:`crop_region`) resized (bilinear) to (3, size, size) float and
    normalised with the model's input ``mean`` / ``std``."""
    from PIL import Image

    crop = Image.fromarray(crop_region(image, region)).resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def truth_overlap(region: np.ndarray, truth: np.ndarray) -> float:
    """``|region & truth| / min(|region|, |truth|)`` of two (H, W) bool masks (0 if either is empty)."""
    region, truth = np.asarray(region, dtype=bool), np.asarray(truth, dtype=bool)
    smaller = min(int(region.sum()), int(truth.sum()))
    return float((region & truth).sum()) / smaller if smaller else 0.0
