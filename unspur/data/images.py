"""Image decoding for every reader of the image table: encoded bytes or a file -> RGB array.

One decoder for the mask stage's segmenters (``actors/segmenters.py``) and the training / evaluation
datasets (``unspur/data/torch_dataset.py``); encoding lives in ``unspur/data/encoding.py``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ImageError", "decode_rgb"]


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


def decode_rgb(data: bytes | None, path: str | None = None) -> np.ndarray:
    """Image bytes (or a file at ``path``) -> (H, W, 3) uint8 RGB.

    Any mode PIL opens is accepted (CMYK, RGBA, P, L, 16-bit ...). PIL's decompression-bomb
    limit stays on. Raises :class:`ImageError` naming the problem (0 bytes, truncated, unknown
    format, too many pixels, missing file).
    """
    from PIL import Image, UnidentifiedImageError

    if data is None or _isna(data):
        if not path or _isna(path):
            raise ImageError("row has neither image bytes nor a path")
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise ImageError(f"cannot read image file {path}: {err}") from None
    if len(data) == 0:
        raise ImageError("image has 0 bytes")
    try:
        with Image.open(io.BytesIO(bytes(data))) as img:
            img.load()
            return _to_rgb8(img)
    except Image.DecompressionBombError as err:
        raise ImageError(f"decompression bomb refused ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"cannot decode image ({type(err).__name__}: {err})") from None
