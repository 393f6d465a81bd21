"""Image encoding for the image table: arrays -> PNG bytes (decoding: ``unspur.data.images.decode_rgb``)."""

from __future__ import annotations

import io

import numpy as np

__all__ = ["encode_png"]


def encode_png(image: np.ndarray) -> bytes:
    """``(H, W, 3)`` or ``(H, W)`` uint8 array -> PNG bytes (lossless)."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"encode_png expects an (H, W[, 3]) uint8 array, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()
