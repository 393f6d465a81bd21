"""digits-grid: RaVL's synthetic setting (METHODS.md 2.4) from scikit-learn's shipped digits.

Each image is a 2x2 grid of quadrants on black. One quadrant holds a handwritten digit (an
8x8 scikit-learn digit, upsampled); another may hold a red rectangle, the spurious marker. In
the train split the marker's presence is correlated with ``target_digit`` at a given Cramer's V;
val and test carry the marker independently of the class. The regions table lists the four
quadrants of every image with the ground truth of which one holds the spurious feature.

Cramer's V of (class, marker) when the target class has share ``pi`` and marker rate ``a``, every
other class rate ``b``, and the marker's overall rate is ``m = pi a + (1 - pi) b``::

    V = sqrt(pi (1 - pi)) |a - b| / sqrt(m (1 - m))

(the K x 2 table's chi-square equals that of the collapsed 2 x 2 table, because every non-target
class has the same marker rate). Given V and m this fixes ``a = m + (1 - pi) d`` and
``b = m - pi d`` with ``d = V sqrt(m (1 - m) / (pi (1 - pi)))``; with the default m = pi,
``a = pi + V (1 - pi)`` and ``b = pi (1 - V)``. Labels are balanced and each class gets exactly
``round(rate * n_class)`` markers, so a generated split's V matches up to rounding.

Everything is deterministic per ``(seed, split, index)``; the per-split plan (labels, marker
flags) is derived from ``(seed, split)`` alone, so any row renders alone on any worker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from unspur.config.base import StrictModel
from unspur.data.encoding import encode_png
from unspur.data.kinds import DATA_KINDS
from unspur.data.spuriousworld import check_templates

__all__ = [
    "DigitsGridConfig",
    "CAPTION_TEMPLATES",
    "DIGIT_NAMES",
    "REGION_NAMES",
    "SPLITS",
    "DigitSample",
    "cramers_v",
    "generate_tables",
    "group_name",
    "marker_rates",
    "quadrant_boxes",
    "render_sample",
    "sample_rows",
]

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
REGION_NAMES = ("top_left", "top_right", "bottom_left", "bottom_right")
CAPTION_TEMPLATES = (
    "the digit appears to be {d}",
    "a photo of the digit {d}",
    "an image of the number {d}",
    "a handwritten {d}",
)
#: fractions of each digit class's source images given to train / val / test (fixed, seed-free)
_SOURCE_FRACTIONS = (0.6, 0.2, 0.2)


class DigitsGridConfig(StrictModel):
    """digits-grid (RaVL's synthetic setting): a digit in one quadrant of a 2x2 grid and a red
    rectangle (the spurious marker) in another quadrant.

    Train split: the marker's presence is correlated with ``target_digit`` at Cramer's V =
    ``cramers_v``; the per-class marker rates are derived from V exactly (see
    :func:`unspur.data.digits_grid.marker_rates`). ``marker_rate`` is the overall train marker
    frequency (None = the target class's share, so V=1 means "marker iff target"). Val and test
    splits carry the marker with probability ``eval_marker_rate`` independently of the class
    (no correlation). ``marker_scale`` bounds the rectangle's sides as a fraction of a quadrant.
    Captions: ``caption`` is a random one of ``caption_templates`` (``{d}``: the digit's name);
    ``caption_descriptive`` is ``descriptive_templates[index % n]`` with ``{d}`` and ``{marker}``
    = ``marker_phrases[has_marker]`` (without, with the marker).
    """

    image_size: int = Field(64, ge=16, description="pixels, even")
    digits: list[int] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    target_digit: int = 0
    cramers_v: float = Field(0.9, ge=0.0, le=1.0)
    marker_rate: float | None = Field(None, gt=0.0, lt=1.0)
    eval_marker_rate: float = Field(0.5, gt=0.0, lt=1.0)
    marker_scale: float = Field(0.6, ge=0.1, le=1.0)
    n_train: int = Field(2000, gt=0)
    n_val: int = Field(500, gt=0)
    n_test: int = Field(1000, gt=0)
    caption_templates: list[str] = list(CAPTION_TEMPLATES)
    descriptive_templates: list[str] = ["a photo of the digit {d} {marker}."]
    marker_phrases: tuple[str, str] = ("on black", "with a red rectangle")
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> DigitsGridConfig:
        if len(set(self.digits)) != len(self.digits) or len(self.digits) < 2:
            raise ValueError(f"digits must hold >= 2 distinct digits, got {self.digits}")
        if any(not 0 <= d <= 9 for d in self.digits):
            raise ValueError(f"digits must lie in 0..9, got {self.digits}")
        if self.target_digit not in self.digits:
            raise ValueError(f"target_digit {self.target_digit} is not one of digits {self.digits}")
        check_templates("caption_templates", self.caption_templates, d="three")
        check_templates("descriptive_templates", self.descriptive_templates, d="three", marker="on black")
        if self.image_size % 2:
            raise ValueError(f"image_size must be even and >= 16 pixels, got {self.image_size}")
        marker_rates(self)  # raises when (cramers_v, marker_rate) is not reachable
        return self


@dataclass
class DigitSample:
    """One rendered image: ``image`` (H, W, 3) uint8; masks (H, W) bool; quadrants 0..3."""

    image: np.ndarray
    label: int
    class_name: str
    has_marker: bool
    digit_region: int
    marker_region: int  # -1 without a marker
    caption: str
    digit_mask: np.ndarray
    marker_mask: np.ndarray


def marker_rates(cfg: DigitsGridConfig) -> tuple[float, float]:
    """Train marker rates ``(a, b)``: in the target class and in every other class.

    Raises ValueError when ``cramers_v`` cannot be reached with the given ``marker_rate``.
    """
    pi = 1.0 / len(cfg.digits)
    m = pi if cfg.marker_rate is None else cfg.marker_rate
    d = cfg.cramers_v * math.sqrt(m * (1 - m) / (pi * (1 - pi)))
    a, b = m + (1 - pi) * d, m - pi * d
    if a > 1 + 1e-9 or b < -1e-9:
        raise ValueError(
            f"cramers_v={cfg.cramers_v} is unreachable with marker_rate={m:.4f} and "
            f"{len(cfg.digits)} classes (needs target rate {a:.3f} <= 1 and other rate {b:.3f} >= 0); "
            "lower cramers_v or leave marker_rate unset (= the target class's share)"
        )
    return min(a, 1.0), max(b, 0.0)


def cramers_v(x: Sequence | np.ndarray, y: Sequence | np.ndarray) -> float:
    """Cramer's V (no bias correction) of two categorical arrays of length N; 0.0 if degenerate."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"cramers_v needs two non-empty arrays of one length, got {len(x)} and {len(y)}")
    _, xi = np.unique(x, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    table = np.zeros((xi.max() + 1, yi.max() + 1))
    np.add.at(table, (xi, yi), 1)
    if min(table.shape) < 2:
        return 0.0
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / len(x)
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (len(x) * (min(table.shape) - 1)))


def quadrant_boxes(image_size: int) -> list[list[int]]:
    """The 4 quadrants as ``[x0, y0, x1, y1]`` (x1/y1 exclusive), in REGION_NAMES order."""
    q = image_size // 2
    return [[(i % 2) * q, (i // 2) * q, (i % 2) * q + q, (i // 2) * q + q] for i in range(4)]


@lru_cache(maxsize=1)
def _source_digits() -> tuple[np.ndarray, dict[tuple[int, int], np.ndarray]]:
    """scikit-learn's 1797 digits (8x8, 0..16) and, per (split code, digit), its source indices."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(20240917)
    pools: dict[tuple[int, int], np.ndarray] = {}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(data.target == digit))
        n_train = int(len(idx) * _SOURCE_FRACTIONS[0])
        n_val = int(len(idx) * _SOURCE_FRACTIONS[1])
        for code, part in enumerate((idx[:n_train], idx[n_train : n_train + n_val], idx[n_train + n_val :])):
            pools[(code, digit)] = part
    return data.images.astype(np.float64) / 16.0, pools


def _split_size(cfg: DigitsGridConfig, split: str) -> int:
    return {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]


@lru_cache(maxsize=16)
def _plan_cached(seed: int, code: int, n: int, n_cls: int, target: int, rates: tuple[float, ...]):
    rng = np.random.default_rng([seed, code, 0])
    labels = rng.permutation(np.arange(n) % n_cls)
    markers = np.zeros(n, dtype=bool)
    others = [c for c in range(n_cls) if c != target]
    n_target = int(np.count_nonzero(labels == target))
    # the non-target classes share one marker total, spread as evenly as possible (a per-class
    # rounding of a small rate would round every class to 0 and inflate V)
    total_other = int(np.floor(rates[1] * (n - n_target) + 0.5))
    quota = np.full(len(others), total_other // len(others))
    quota[rng.permutation(len(others))[: total_other % len(others)]] += 1
    counts = {
        target: int(np.floor(rates[0] * n_target + 0.5)),
        **dict(zip(others, quota.tolist(), strict=True)),
    }
    for c, count in counts.items():
        idx = np.flatnonzero(labels == c)
        markers[rng.choice(idx, size=min(count, len(idx)), replace=False)] = True
    return labels, markers


def _plan(cfg: DigitsGridConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-split ``(labels (N,), markers (N,) bool)``, exact class balance and marker counts."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    rates = marker_rates(cfg) if split == "train" else (cfg.eval_marker_rate, cfg.eval_marker_rate)
    target = cfg.digits.index(cfg.target_digit)
    return _plan_cached(cfg.seed, SPLITS[split], _split_size(cfg, split), len(cfg.digits), target, rates)


def _digit_patch(source: np.ndarray, side: int) -> np.ndarray:
    """Bilinear upsample of an (8, 8) digit in [0, 1] to (side, side)."""
    from PIL import Image

    img = Image.fromarray(source.astype(np.float32), mode="F").resize((side, side), Image.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float64), 0.0, 1.0)


def render_sample(cfg: DigitsGridConfig, split: str, index: int) -> DigitSample:
    """Render image ``index`` of ``split`` (deterministic per (cfg.seed, split, index))."""
    labels, markers = _plan(cfg, split)
    if not 0 <= index < len(labels):
        raise ValueError(f"index {index} is outside split {split!r} of {len(labels)} images")
    label, has_marker = int(labels[index]), bool(markers[index])
    digit = cfg.digits[label]
    rng = np.random.default_rng([cfg.seed, SPLITS[split], 1, index])
    digit_q = int(rng.integers(4))
    marker_q = int([q for q in range(4) if q != digit_q][rng.integers(3)]) if has_marker else -1
    size, q = cfg.image_size, cfg.image_size // 2
    boxes = quadrant_boxes(size)
    canvas = np.zeros((size, size, 3))

    images, pools = _source_digits()
    pool = pools[(SPLITS[split], digit)]
    side = max(8, int(round(q * 0.8)))
    patch = _digit_patch(images[pool[rng.integers(len(pool))]], side)
    x0, y0 = (
        boxes[digit_q][0] + int(rng.integers(q - side + 1)),
        boxes[digit_q][1] + int(rng.integers(q - side + 1)),
    )
    canvas[y0 : y0 + side, x0 : x0 + side] = patch[..., None] * rng.uniform(0.8, 1.0)
    digit_mask = np.zeros((size, size), dtype=bool)
    digit_mask[y0 : y0 + side, x0 : x0 + side] = patch > 0.25

    marker_mask = np.zeros((size, size), dtype=bool)
    if has_marker:
        lo, hi = max(2, int(round(q * cfg.marker_scale / 2))), max(3, int(round(q * cfg.marker_scale)))
        w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        mx = boxes[marker_q][0] + int(rng.integers(q - w + 1))
        my = boxes[marker_q][1] + int(rng.integers(q - h + 1))
        marker_mask[my : my + h, mx : mx + w] = True
        red = (rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.15), rng.uniform(0.0, 0.15))
        canvas[marker_mask] = red
    image = (np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8)
    templates = cfg.caption_templates
    caption = templates[int(rng.integers(len(templates)))].format(d=DIGIT_NAMES[digit])
    return DigitSample(
        image, label, DIGIT_NAMES[digit], has_marker, digit_q, marker_q, caption, digit_mask, marker_mask
    )


def group_name(class_name: str, has_marker: bool) -> str:
    """The group id of an image: ``"<class>/marker"`` or ``"<class>/no_marker"``."""
    return f"{class_name}/{'marker' if has_marker else 'no_marker'}"


def sample_rows(cfg: DigitsGridConfig, split: str, index: int) -> tuple[dict, list[dict], list[dict]]:
    """One image row, its part rows and its 4 region rows.

    image_row: image_id ``"<split>-<index:06d>"``, image (PNG), label, class_name, group, split,
    caption, caption_descriptive, has_marker, digit_region, marker_region (-1 = none), object_rle (the digit),
    marker_rle (COCO RLE of the marker; an empty mask without one). part_rows: [{image_id, part: "digit", rle}].
    region_rows: [{image_id, region (0..3), name, box [x0, y0, x1, y1], has_digit, is_spurious}].
    """
    from unspur.masks import encode

    s = render_sample(cfg, split, index)
    image_id = f"{split}-{index:06d}"
    image_row = {
        "image_id": image_id,
        "image": encode_png(s.image),
        "label": s.label,
        "class_name": s.class_name,
        "group": group_name(s.class_name, s.has_marker),
        "split": split,
        "caption": s.caption,
        "caption_descriptive": cfg.descriptive_templates[index % len(cfg.descriptive_templates)].format(
            d=s.class_name, marker=cfg.marker_phrases[int(s.has_marker)]
        ),
        "has_marker": s.has_marker,
        "digit_region": s.digit_region,
        "marker_region": s.marker_region,
        "object_rle": encode(s.digit_mask),
        "marker_rle": encode(s.marker_mask),
    }
    part_rows = [{"image_id": image_id, "part": "digit", "rle": encode(s.digit_mask)}]
    region_rows = [
        {
            "image_id": image_id,
            "region": r,
            "name": REGION_NAMES[r],
            "box": box,
            "has_digit": r == s.digit_region,
            "is_spurious": r == s.marker_region,
        }
        for r, box in enumerate(quadrant_boxes(cfg.image_size))
    ]
    return image_row, part_rows, region_rows


def generate_tables(cfg: DigitsGridConfig, splits: Sequence[str] = ("train", "val", "test")):
    """Render every image of ``splits`` serially -> (images_df, parts_df, regions_df)."""
    import pandas as pd

    images, parts, regions = [], [], []
    for split in splits:
        for index in range(_split_size(cfg, split)):
            image_row, part_rows, region_rows = sample_rows(cfg, split, index)
            images.append(image_row)
            parts.extend(part_rows)
            regions.extend(region_rows)
    return pd.DataFrame(images), pd.DataFrame(parts), pd.DataFrame(regions)


def train_statistics(cfg: DigitsGridConfig, train: Any) -> dict[str, float]:
    """The measured shortcut of a rendered train split (a DataFrame with ``label``, ``has_marker``): exact
    Cramer's V and the marker rate of the target class and of the others."""
    target = cfg.digits.index(cfg.target_digit)
    return {
        "train_cramers_v": cramers_v(train["label"], train["has_marker"]),
        "train_marker_rate_target": float(train[train["label"] == target]["has_marker"].mean()),
        "train_marker_rate_other": float(train[train["label"] != target]["has_marker"].mean()),
    }


DATA_KINDS.add(
    "digits_grid",
    sample_rows,
    DigitsGridConfig,
    tables=("parts", "regions"),
    classes=lambda cfg: [DIGIT_NAMES[d] for d in cfg.digits],
    shortcut_column="has_marker",
    statistics=train_statistics,
)
