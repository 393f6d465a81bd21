"""The one image decoder (unspur.data.images): every PIL mode to RGB uint8, clear errors."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from unspur.data.images import MAX_ASPECT, MIN_SIDE, ImageError, decode_rgb, image_size, size_problems
from unspur.data.torch_dataset import load_image


def _png(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt) if mode else Image.fromarray(arr).save(
        buf, format=fmt
    )
    return buf.getvalue()


def _rgb(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_decode_rgb_accepts_every_pixel_mode():
    rgb = _rgb(8, 10)
    assert np.array_equal(decode_rgb(_png(rgb)), rgb)
    rgba = np.concatenate([rgb, np.full((8, 10, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(decode_rgb(_png(rgba)), rgb)
    grey = rgb[..., 0]
    assert np.array_equal(decode_rgb(_png(grey)), np.repeat(grey[..., None], 3, axis=2))
    deep = np.arange(80, dtype=np.uint16).reshape(8, 10) * 800
    out = decode_rgb(_png(deep))
    assert out.shape == (8, 10, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], np.rint(deep / 257.0).astype(np.uint8))  # rescaled, not clipped
    cmyk = Image.fromarray(rgb).convert("CMYK")
    buf = io.BytesIO()
    cmyk.save(buf, format="JPEG", quality=95)
    out = decode_rgb(buf.getvalue())
    assert out.shape == (8, 10, 3) and np.abs(out.astype(int) - rgb).mean() < 40


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "0 bytes"),
        (b"not an image at all", "cannot decode"),
        (None, "neither image bytes nor a path"),
    ],
)
def test_decode_rgb_rejects_unreadable_bytes(data, needle):
    with pytest.raises(ImageError, match=needle):
        decode_rgb(data)


def test_decode_rgb_rejects_truncated_and_bombs_with_pils_limit_on():
    full = _png(_rgb(64, 64))
    with pytest.raises(ImageError, match="cannot decode"):
        decode_rgb(full[: len(full) // 2])
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError, match="decompression bomb"):
        decode_rgb(_bomb_png())
    assert Image.MAX_IMAGE_PIXELS == limit and limit is not None


def test_decode_rgb_reads_a_file_and_dataset_rows_use_the_same_decoder(tmp_path):
    rgb = _rgb(8, 9)
    path = tmp_path / "a.png"
    path.write_bytes(_png(rgb))
    assert np.array_equal(decode_rgb(None, str(path)), rgb)
    assert np.array_equal(decode_rgb(float("nan"), str(path)), rgb)
    assert np.array_equal(load_image({"image_id": "a", "image": None, "path": str(path)}), rgb)
    with pytest.raises(ImageError, match="image row 'b'.*neither"):
        load_image({"image_id": "b", "image": None, "path": float("nan")})
    with pytest.raises(ImageError, match="cannot read image file"):
        decode_rgb(None, str(tmp_path / "missing.png"))


@pytest.mark.parametrize(
    ("h", "w"), [(1, 1), (1, 4000), (4000, 1), (MIN_SIDE - 1, 64), (8, 8 * int(MAX_ASPECT) + 1)]
)
def test_sizes_outside_the_limits_are_refused_from_the_header_with_what_is_allowed(h, w):
    data = _png(_rgb(h, w))
    assert image_size(data) == (h, w)
    with pytest.raises(ImageError, match=rf"image is {h}x{w} px.*both sides >= {MIN_SIDE} px.*16 times"):
        decode_rgb(data)


@pytest.mark.parametrize(
    ("h", "w"), [(MIN_SIDE, MIN_SIDE), (8, 8 * int(MAX_ASPECT)), (8 * int(MAX_ASPECT), 8)]
)
def test_sizes_at_the_limits_decode(h, w):
    assert decode_rgb(_png(_rgb(h, w))).shape == (h, w, 3)


def test_size_problems_scans_a_table_and_names_the_rows():
    rows = pd.DataFrame(
        {
            "image_id": ["ok", "dot", "strip", "junk"],
            "image": [_png(_rgb(32, 32)), _png(_rgb(1, 1)), _png(_rgb(1, 4000)), b"junk"],
        }
    )
    n_bad, shown = size_problems(rows, limit=2)
    assert n_bad == 3 and len(shown) == 2
    assert shown[0].startswith("dot: image is 1x1 px") and shown[1].startswith("strip: image is 1x4000 px")
