"""Binary masks and their COCO run-length encoding (pycocotools).

Masks are ``(H, W)`` bool arrays. An RLE is the COCO dict ``{"size": [H, W], "counts": str}``
(compressed counts, decoded to ``str`` so it stores in Parquet/JSON as text).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

__all__ = ["encode", "decode", "union", "union_rles", "resize_mask", "bbox", "iou", "area"]


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Encode an ``(H, W)`` boolean mask as a COCO RLE ``{"size": [H, W], "counts": str}``."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode expects an (H, W) mask, got shape {mask.shape}")
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("utf-8")}


def _to_coco(rle: Mapping[str, Any]) -> dict[str, Any]:
    if "size" not in rle or "counts" not in rle:
        raise ValueError(f"not a COCO RLE (needs 'size' and 'counts'): keys {sorted(rle)}")
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        h, w = (int(v) for v in rle["size"])
        return coco_mask.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("utf-8")
    return {"size": [int(v) for v in rle["size"]], "counts": counts}


def decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode a COCO RLE (compressed or uncompressed counts) into an ``(H, W)`` bool mask."""
    return coco_mask.decode(_to_coco(rle)).astype(bool)


def union(masks: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixel-wise OR of ``(H, W)`` masks; an empty iterable gives an all-False mask of ``shape``."""
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        if m.shape != out.shape:
            raise ValueError(f"mask of shape {m.shape} cannot join a union of shape {out.shape}")
        out |= m.astype(bool)
    return out


def union_rles(rles: Iterable[Mapping[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """Decode and OR several RLEs (e.g. all concept masks of one image)."""
    return union((decode(r) for r in rles), shape)


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an ``(H, W)`` mask to ``size = (H', W')``."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    th, tw = size
    if (h, w) == (th, tw):
        return mask.copy()
    rows = np.minimum((np.arange(th) + 0.5) * h / th, h - 1).astype(int)
    cols = np.minimum((np.arange(tw) + 0.5) * w / tw, w - 1).astype(int)
    return mask[rows][:, cols]


def bbox(mask: np.ndarray) -> list[int]:
    """Tight box ``[x0, y0, x1, y1]`` (XYXY, x1/y1 exclusive) of a mask; ``[0, 0, 0, 0]`` if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def area(mask: np.ndarray) -> int:
    """Number of pixels set in the mask."""
    return int(np.count_nonzero(mask))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks of the same shape; 0.0 when both are empty."""
    if a.shape != b.shape:
        raise ValueError(f"iou needs masks of one shape, got {a.shape} and {b.shape}")
    a, b = a.astype(bool), b.astype(bool)
    union_px = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union_px) if union_px else 0.0
