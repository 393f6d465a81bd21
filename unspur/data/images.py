"""Image decoding for every reader of the image table: encoded bytes or a file -> RGB array.

One decoder for the mask stage's segmenters (``actors/segmenters.py``) and the training / evaluation
datasets (``unspur/data/torch_dataset.py``, used by finetune, evaluate and the CLIP stages); encoding
lives in ``unspur/data/encoding.py``. Every decoded image is checked against :data:`MIN_SIDE` and
:data:`MAX_ASPECT` from its header, before its pixels are loaded and before any model sees it:
a 1x1 or a 1x4000 image otherwise fails deep inside a detector's or SAM's resizing.
:func:`size_problems` runs the same check over a whole image table (headers only), so a job can
refuse bad rows before it starts Ray.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MAX_ASPECT", "MIN_SIDE", "ImageError", "check_size", "decode_rgb", "image_size", "size_problems"]

#: the shortest side an image may have, in pixels
MIN_SIDE = 8
#: the longest side may be at most this many times the shortest (grounding models resize the
#: short side to ~800 px and cap the long side at 1333; SAM resizes the long side to 1024)
MAX_ASPECT = 16.0


class ImageError(ValueError):
    """An image row cannot be turned into an RGB array (the message says why)."""


def _isna(value: Any) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _to_rgb8(img: Any) -> np.ndarray:
    """A loaded PIL image of any mode -> (H, W, 3) uint8 RGB; 16/32-bit grey is rescaled, not clipped."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy (torch warns on read-only arrays)


def check_size(height: int, width: int) -> None:
    """Raise :class:`ImageError` unless an image of ``height`` x ``width`` pixels is allowed."""
    short, long = min(height, width), max(height, width)
    if short < MIN_SIDE or long > MAX_ASPECT * short:
        raise ImageError(
            f"image is {height}x{width} px (height x width); allowed: both sides >= {MIN_SIDE} px and "
            f"the long side at most {MAX_ASPECT:g} times the short one (resize or pad it, or drop the row)"
        )


def _read(data: Any, path: Any) -> bytes:
    if data is None or _isna(data):
        if not path or _isna(path):
            raise ImageError("row has neither image bytes nor a path")
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise ImageError(f"cannot read image file {path}: {err}") from None
    if len(data) == 0:
        raise ImageError("image has 0 bytes")
    return bytes(data)


def image_size(data: bytes | None, path: str | None = None) -> tuple[int, int]:
    """(height, width) of an image from its header (no pixels decoded); :class:`ImageError` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    data = _read(data, path)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.height, img.width
    except Image.DecompressionBombError as err:
        raise ImageError(f"decompression bomb refused ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"cannot decode image ({type(err).__name__}: {err})") from None


def size_problems(rows: Any, limit: int = 5) -> tuple[int, list[str]]:
    """Check every row of an image table (``image_id`` and ``image`` or ``path`` columns) from its
    header; returns (number of bad rows, up to ``limit`` ``"<image_id>: <reason>"`` lines)."""
    n_bad, shown = 0, []
    images = rows["image"] if "image" in rows.columns else [None] * len(rows)
    paths = rows["path"] if "path" in rows.columns else [None] * len(rows)
    for image_id, data, path in zip(rows["image_id"], images, paths, strict=True):
        try:
            check_size(*image_size(data, path))
        except ImageError as err:
            n_bad += 1
            if len(shown) < limit:
                shown.append(f"{image_id}: {err}")
    return n_bad, shown


def decode_rgb(data: bytes | None, path: str | None = None) -> np.ndarray:
    """Image bytes (or a file at ``path``) -> (H, W, 3) uint8 RGB.

    Any mode PIL opens is accepted (CMYK, RGBA, P, L, 16-bit ...). PIL's decompression-bomb
    limit stays on. Raises :class:`ImageError` naming the problem (0 bytes, truncated, unknown
    format, too many pixels, missing file, a size outside :func:`check_size`).
    """
    from PIL import Image, UnidentifiedImageError

    data = _read(data, path)
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_size(img.height, img.width)  # from the header, before the pixels are loaded
            img.load()
            return _to_rgb8(img)
    except Image.DecompressionBombError as err:
        raise ImageError(f"decompression bomb refused ({err})") from None
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"cannot decode image ({type(err).__name__}: {err})") from None
