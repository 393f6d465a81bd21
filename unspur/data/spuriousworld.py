"""SpuriousWorld: a synthetic benchmark with a known shortcut, rendered in pure numpy.

Each image shows one object made of NAMED parts (a bird's beak, wing and feather ...) on a
named background texture (water, grass ...). In the train split class ``i`` sits on its own
background ``backgrounds[i]`` with probability ``rho``, so the background is a shortcut; the
val and test splits are balanced over every (class, background) group, so a model that uses
the shortcut scores a low worst-group accuracy. Every part has its own pixel mask; the object
mask is the union of the part masks. Part names are WordNet part meronyms of the class names,
so an offline concept proposer finds them.

Rendering is deterministic per ``(seed, split, index)``: one ``numpy.random.Generator`` seeded
with ``[seed, split_code, index]`` draws everything for one image, so any row can be rendered
alone, in any order, on any worker.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from unspur.config.base import StrictModel
from unspur.data.kinds import DATA_KINDS

__all__ = [
    "SpuriousWorldConfig",
    "BACKGROUNDS",
    "CLASS_PARTS",
    "SPLITS",
    "Sample",
    "generate_tables",
    "group_name",
    "render_sample",
    "sample_rows",
]

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

Grid = tuple[np.ndarray, np.ndarray]  # (u, v): object-local coordinates per pixel, (H, W) each


# ----------------------------------------------------------------------------- shapes


def _ellipse(g: Grid, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    u, v = g
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _polygon(g: Grid, points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Convex polygon (points in either winding order) -> (H, W) bool."""
    u, v = g
    pts = np.asarray(points, dtype=np.float64)
    signs = []
    for (u0, v0), (u1, v1) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        signs.append((u1 - u0) * (v - v0) - (v1 - v0) * (u - u0))
    cross = np.stack(signs)
    return (cross >= 0).all(axis=0) | (cross <= 0).all(axis=0)


def _segment(g: Grid, p0: tuple[float, float], p1: tuple[float, float], half_width: float) -> np.ndarray:
    u, v = g
    du, dv = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((u - p0[0]) * du + (v - p0[1]) * dv) / (du * du + dv * dv), 0.0, 1.0)
    return (u - p0[0] - t * du) ** 2 + (v - p0[1] - t * dv) ** 2 <= half_width**2


def _ring(g: Grid, cu: float, cv: float, radius: float, half_width: float) -> np.ndarray:
    u, v = g
    return np.abs(np.hypot(u - cu, v - cv) - radius) <= half_width


# ----------------------------------------------------------------------------- objects
# Local coordinates: the object spans roughly [-1, 1] x [-1, 1], u to the right, v down.
# Parts are listed back to front; a later part covers an earlier one, so part masks are
# disjoint and their union is the object mask.


def _bird(g: Grid) -> dict[str, np.ndarray]:
    feather = (
        _ellipse(g, -0.05, 0.1, 0.62, 0.36)
        | _ellipse(g, 0.55, -0.22, 0.24, 0.22)
        | _polygon(g, [(-0.55, 0.05), (-1.0, -0.2), (-1.0, 0.35)])
    )
    return {
        "feather": feather,
        "wing": _polygon(g, [(-0.45, 0.0), (0.25, -0.05), (-0.2, -0.75)]),
        "beak": _polygon(g, [(0.74, -0.3), (0.74, -0.1), (1.0, -0.2)]),
    }


def _airplane(g: Grid) -> dict[str, np.ndarray]:
    return {
        "wing": _polygon(g, [(-0.05, 0.0), (0.3, 0.0), (-0.25, -0.95), (-0.45, -0.95)])
        | _polygon(g, [(-0.05, 0.0), (0.3, 0.0), (-0.25, 0.95), (-0.45, 0.95)])
        | _polygon(g, [(-0.8, 0.0), (-0.65, 0.0), (-0.95, -0.4), (-1.0, -0.4)])
        | _polygon(g, [(-0.8, 0.0), (-0.65, 0.0), (-0.95, 0.4), (-1.0, 0.4)]),
        "fuselage": _ellipse(g, 0.0, 0.0, 1.0, 0.17),
        "windshield": _ellipse(g, 0.72, 0.0, 0.13, 0.1),
    }


def _bicycle(g: Grid) -> dict[str, np.ndarray]:
    return {
        "wheel": _ring(g, -0.58, 0.35, 0.36, 0.11) | _ring(g, 0.58, 0.35, 0.36, 0.11),
        "handlebar": _segment(g, (0.58, 0.35), (0.42, -0.55), 0.08)
        | _segment(g, (0.22, -0.6), (0.65, -0.55), 0.09),
        "pedal": _ring(g, 0.0, 0.35, 0.13, 0.05)
        | _segment(g, (0.0, 0.35), (0.1, 0.62), 0.045)
        | _segment(g, (-0.02, 0.62), (0.24, 0.62), 0.07),
    }


def _tree(g: Grid) -> dict[str, np.ndarray]:
    return {
        "trunk": _polygon(g, [(-0.13, 1.0), (0.13, 1.0), (0.08, -0.1), (-0.08, -0.1)]),
        "limb": _segment(g, (0.0, 0.3), (-0.55, -0.15), 0.06) | _segment(g, (0.0, 0.15), (0.5, -0.25), 0.06),
        "crown": _ellipse(g, 0.0, -0.5, 0.65, 0.45),
    }


@dataclass(frozen=True)
class _ObjectSpec:
    draw: Callable[[Grid], dict[str, np.ndarray]]
    colors: dict[str, tuple[float, float, float]]  # part -> RGB in [0, 1]


_OBJECTS: dict[str, _ObjectSpec] = {
    "bird": _ObjectSpec(
        _bird, {"feather": (0.85, 0.25, 0.2), "wing": (0.45, 0.1, 0.1), "beak": (1.0, 0.8, 0.0)}
    ),
    "airplane": _ObjectSpec(
        _airplane,
        {"fuselage": (0.55, 0.55, 0.62), "wing": (0.25, 0.25, 0.3), "windshield": (0.1, 0.85, 0.95)},
    ),
    "bicycle": _ObjectSpec(
        _bicycle, {"wheel": (0.08, 0.08, 0.08), "handlebar": (0.75, 0.1, 0.6), "pedal": (0.95, 0.55, 0.1)}
    ),
    "tree": _ObjectSpec(
        _tree, {"trunk": (0.4, 0.22, 0.08), "limb": (0.3, 0.16, 0.05), "crown": (0.5, 0.2, 0.6)}
    ),
}

CLASS_PARTS: dict[str, tuple[str, ...]] = {
    "bird": ("beak", "wing", "feather"),
    "airplane": ("fuselage", "wing", "windshield"),
    "bicycle": ("wheel", "handlebar", "pedal"),
    "tree": ("trunk", "crown", "limb"),
}


# ----------------------------------------------------------------------------- backgrounds
# Each texture maps (rng, size) -> (size, size, 3) float in [0, 1], random phase/frequency per image.


def _coords(size: int) -> Grid:
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) / size
    return xs, ys


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise: a (cells x cells) random grid bilinearly upsampled to (size, size) in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1))
    pos = np.linspace(0, cells, size, endpoint=False)
    i = pos.astype(int)
    f = pos - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _mix(a: Sequence[float], b: Sequence[float], t: np.ndarray) -> np.ndarray:
    a_, b_ = np.asarray(a), np.asarray(b)
    return a_ + (b_ - a_) * t[..., None]


def _water(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    freq, phase = rng.uniform(14, 22), rng.uniform(0, 2 * np.pi)
    waves = 0.5 + 0.5 * np.sin(freq * y * 2 * np.pi / 4 + phase + 1.5 * np.sin(6 * x + phase))
    return _mix((0.05, 0.2, 0.55), (0.3, 0.55, 0.85), 0.7 * waves + 0.3 * _smooth_noise(rng, size, 4))


def _grass(rng: np.random.Generator, size: int) -> np.ndarray:
    blades = rng.random(size)[None, :] * 0.6 + 0.4 * rng.random((size, size))
    return _mix((0.1, 0.35, 0.05), (0.35, 0.7, 0.15), 0.6 * blades + 0.4 * _smooth_noise(rng, size, 5))


def _sand(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    dunes = 0.5 + 0.5 * np.sin(rng.uniform(5, 9) * 2 * np.pi * (y + 0.3 * x) + rng.uniform(0, 6.3))
    grain = rng.random((size, size))
    return _mix((0.72, 0.6, 0.35), (0.95, 0.85, 0.6), 0.5 * dunes + 0.5 * grain)


def _snow(rng: np.random.Generator, size: int) -> np.ndarray:
    flakes = (rng.random((size, size)) > 0.93).astype(np.float64)
    base = _smooth_noise(rng, size, 3)
    return np.clip(_mix((0.75, 0.8, 0.9), (0.97, 0.97, 1.0), 0.7 * base + 0.3 * flakes), 0, 1)


def _rock(rng: np.random.Generator, size: int) -> np.ndarray:
    t = 0.6 * _smooth_noise(rng, size, 6) + 0.4 * _smooth_noise(rng, size, 12)
    return _mix((0.25, 0.24, 0.23), (0.6, 0.58, 0.55), t)


def _sky(rng: np.random.Generator, size: int) -> np.ndarray:
    _, y = _coords(size)
    clouds = np.clip(_smooth_noise(rng, size, 4) * 1.6 - 0.8, 0, 1)
    sky = _mix((0.35, 0.6, 0.95), (0.7, 0.85, 1.0), y)
    return sky + (1.0 - sky) * clouds[..., None]


def _brick(rng: np.random.Generator, size: int) -> np.ndarray:
    x, y = _coords(size)
    rows = rng.uniform(6, 9)
    offset = (np.floor(y * rows) % 2) * 0.5
    mortar = ((y * rows) % 1 < 0.15) | (((x * rows / 2) + offset) % 1 < 0.08)
    brick = _mix((0.55, 0.18, 0.1), (0.75, 0.3, 0.15), rng.random((size, size)) * 0.5)
    return np.where(mortar[..., None], 0.8, brick)


def _forest(rng: np.random.Generator, size: int) -> np.ndarray:
    t = _smooth_noise(rng, size, 8)
    return _mix((0.02, 0.15, 0.05), (0.15, 0.35, 0.12), t)


BACKGROUNDS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "water": _water,
    "grass": _grass,
    "sand": _sand,
    "snow": _snow,
    "rock": _rock,
    "sky": _sky,
    "brick": _brick,
    "forest": _forest,
}


# ----------------------------------------------------------------------------- sampling


def check_templates(field: str, templates: Sequence[str], **names: str) -> None:
    """ValueError unless ``templates`` is non-empty and each formats with exactly ``names``."""
    if not templates:
        raise ValueError(f"{field} must hold at least one caption template")
    for template in templates:
        try:
            template.format(**names)
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"{field}: template {template!r} does not format with the fields "
                f"{{{', '.join(names)}}} ({type(err).__name__}: {err})"
            ) from None


class SpuriousWorldConfig(StrictModel):
    """SpuriousWorld: named-part objects pasted on named background textures.

    Train split: class i sits on ``backgrounds[i]`` with probability ``rho``, else on another
    background drawn uniformly. Val and test splits are balanced over every (class, background)
    group. ``object_scale`` is the object's half-extent as a fraction of half the image side;
    ``contrast`` in (0, 1] blends the object's colours with the background behind it (1 = opaque).
    ``color_jitter``: std of the per-image RGB noise on each part's class colour (larger = colour
    tells the class less, shape more).
    ``plate_margin`` > 0 puts the object on a neutral grey card (its box grown by that many pixels),
    so with a margin of at least the patch size no patch that touches the object sees background
    texture: the background's evidence lives in the background patches alone. The defaults are
    calibrated with ``finetune_base.yaml``: an ERM base learns the objects (balanced accuracy
    0.70-0.80) yet leans on the background (worst-group accuracy 0.00-0.49 over six seed runs,
    mostly below 0.25), see benchmarks/README.md.
    ``blur`` > 0 blurs the finished image (Gaussian, sigma in pixels): a lower-fidelity world, e.g.
    for pretraining a CLIP that must not see every detail the fine-tuning images show.
    ``caption_templates`` (``{cls}``: the class name) give an image's ``caption`` column and
    ``descriptive_templates`` (``{cls}``, ``{background}``) its ``caption_descriptive``; image
    ``index`` uses template ``index % len(templates)`` (no random draw: the images do not change).
    ``background_phrases`` words a background in descriptive captions (``{background}``), e.g.
    ``{sand: [sand, the beach, the desert]}``: phrase ``(index // len(templates)) % len(phrases)``;
    a background not listed is written as its name. A broad caption set for pretraining.
    """

    image_size: int = Field(64, ge=16, description="pixels")
    classes: list[str] = ["bird", "airplane", "bicycle", "tree"]
    backgrounds: list[str] = ["water", "grass", "sand", "snow"]
    rho: float = Field(0.985, ge=0.0, le=1.0)
    n_train: int = Field(8000, gt=0)
    n_val: int = Field(640, gt=0)
    n_test: int = Field(1280, gt=0)
    object_scale: float = Field(0.6, gt=0.0, le=1.0)
    contrast: float = Field(1.0, gt=0.0, le=1.0)
    color_jitter: float = Field(0.12, ge=0.0)
    plate_margin: int = Field(8, ge=0, description="pixels")
    blur: float = Field(0.0, ge=0.0, description="Gaussian blur sigma of the whole image, pixels")
    caption_templates: list[str] = ["a photo of a {cls}."]
    descriptive_templates: list[str] = ["a photo of a {cls} on {background}."]
    background_phrases: dict[str, list[str]] = {}
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> SpuriousWorldConfig:
        unknown = [c for c in self.classes if c not in CLASS_PARTS]
        if unknown:
            raise ValueError(f"unknown classes {unknown}; known classes are {sorted(CLASS_PARTS)}")
        unknown = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if unknown:
            raise ValueError(f"unknown backgrounds {unknown}; known backgrounds are {sorted(BACKGROUNDS)}")
        for name, items in (("classes", self.classes), ("backgrounds", self.backgrounds)):
            if len(set(items)) != len(items) or not items:
                raise ValueError(f"{name} must be a non-empty list without repeats, got {items}")
        check_templates("caption_templates", self.caption_templates, cls="bird")
        check_templates("descriptive_templates", self.descriptive_templates, cls="bird", background="water")
        unknown = sorted(set(self.background_phrases) - set(BACKGROUNDS))
        empty = sorted(b for b, phrases in self.background_phrases.items() if not phrases)
        if unknown or empty:
            raise ValueError(
                f"background_phrases: {f'unknown backgrounds {unknown}' if unknown else f'no phrases for {empty}'}; "
                f"keys are backgrounds ({sorted(BACKGROUNDS)}), each with a non-empty list of phrases"
            )
        if len(self.backgrounds) < len(self.classes):
            raise ValueError(
                f"need at least one background per class: {len(self.classes)} classes but only "
                f"{len(self.backgrounds)} backgrounds; add backgrounds or drop classes"
            )
        return self


@dataclass
class Sample:
    """One rendered image: ``image`` (H, W, 3) uint8, masks (H, W) bool."""

    image: np.ndarray
    label: int
    class_name: str
    background: str
    group: str
    parts: dict[str, np.ndarray]
    object_mask: np.ndarray


def group_name(class_name: str, background: str) -> str:
    """The group id of an image: ``"<class>/<background>"``."""
    return f"{class_name}/{background}"


def _split_code(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    return SPLITS[split]


def _split_size(cfg: SpuriousWorldConfig, split: str) -> int:
    return {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]


def _draw_label_background(cfg: SpuriousWorldConfig, split: str, index: int, rng: np.random.Generator):
    n_cls, n_bg = len(cfg.classes), len(cfg.backgrounds)
    if split == "train":
        label = int(rng.integers(n_cls))
        if rng.random() < cfg.rho:
            return label, label
        others = [b for b in range(n_bg) if b != label]
        return label, int(others[rng.integers(len(others))])
    group = index % (n_cls * n_bg)  # balanced: every (class, background) group in turn
    return group // n_bg, group % n_bg


def _object_grid(cfg: SpuriousWorldConfig, rng: np.random.Generator) -> Grid:
    """Random pose: scale, rotation, mirror and position -> local (u, v) per pixel."""
    size = cfg.image_size
    scale = cfg.object_scale * size / 2 * rng.uniform(0.75, 1.15)
    angle = rng.uniform(-np.pi / 6, np.pi / 6)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    margin = min(scale * 0.8, size / 2 - 1)
    cx, cy = rng.uniform(margin, size - margin, size=2)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xs - cx, ys - cy
    cos, sin = np.cos(angle), np.sin(angle)
    return (mirror * (dx * cos + dy * sin) / scale, (-dx * sin + dy * cos) / scale)


def _plate(canvas: np.ndarray, covered: np.ndarray, margin: int) -> np.ndarray:
    """Paint a neutral grey rectangle (the object's box grown by ``margin`` px) behind the object."""
    ys, xs = np.nonzero(covered)
    if len(xs) == 0:
        return canvas
    h, w = covered.shape
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
    out = canvas.copy()
    out[y0:y1, x0:x1] = 0.55
    return out


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius=sigma)))


def render_sample(cfg: SpuriousWorldConfig, split: str, index: int) -> Sample:
    """Render image ``index`` of ``split`` (deterministic per (cfg.seed, split, index))."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = np.random.default_rng([cfg.seed, _split_code(split), index])
    label, bg = _draw_label_background(cfg, split, index, rng)
    class_name, background = cfg.classes[label], cfg.backgrounds[bg]
    canvas = BACKGROUNDS[background](rng, cfg.image_size)
    spec = _OBJECTS[class_name]
    drawn = spec.draw(_object_grid(cfg, rng))
    parts: dict[str, np.ndarray] = {}
    covered = np.zeros((cfg.image_size,) * 2, dtype=bool)
    for part in reversed(list(drawn)):  # front to back: a part keeps only what is visible
        parts[part] = drawn[part] & ~covered
        covered |= drawn[part]
    if cfg.plate_margin > 0:
        canvas = _plate(canvas, covered, cfg.plate_margin)
    for part, mask in parts.items():
        color = np.clip(np.asarray(spec.colors[part]) + rng.normal(0, cfg.color_jitter, 3), 0, 1)
        shade = 1.0 + rng.normal(0, 0.05, mask.shape)[..., None]
        paint = np.clip(color * shade, 0, 1)
        canvas = np.where(mask[..., None], cfg.contrast * paint + (1 - cfg.contrast) * canvas, canvas)
    canvas = np.clip(canvas + rng.normal(0, 0.02, canvas.shape), 0, 1)
    image = (canvas * 255 + 0.5).astype(np.uint8)
    if cfg.blur > 0:
        image = _blur(image, cfg.blur)
    ordered = {part: parts[part] for part in CLASS_PARTS[class_name]}
    return Sample(image, label, class_name, background, group_name(class_name, background), ordered, covered)


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def _pick(templates: Sequence[str], index: int) -> str:
    return templates[index % len(templates)]


def _background_phrase(cfg: SpuriousWorldConfig, background: str, index: int) -> str:
    phrases = cfg.background_phrases.get(background)
    return phrases[(index // len(cfg.descriptive_templates)) % len(phrases)] if phrases else background


def sample_rows(cfg: SpuriousWorldConfig, split: str, index: int) -> tuple[dict, list[dict]]:
    """One image-table row and its part-mask rows (see the image and masks tables contract).

    image_row: image_id ``"<split>-<index:06d>"``, image (PNG bytes), label, class_name,
    background, group, split, caption (the class caption), caption_descriptive (class and
    background), object_rle (COCO RLE dict). part_rows: [{image_id, part, rle}].
    """
    from unspur.masks import encode

    s = render_sample(cfg, split, index)
    image_id = f"{split}-{index:06d}"
    image_row = {
        "image_id": image_id,
        "image": _png(s.image),
        "label": s.label,
        "class_name": s.class_name,
        "background": s.background,
        "group": s.group,
        "split": split,
        "caption": _pick(cfg.caption_templates, index).format(cls=s.class_name),
        "caption_descriptive": _pick(cfg.descriptive_templates, index).format(
            cls=s.class_name, background=_background_phrase(cfg, s.background, index)
        ),
        "object_rle": encode(s.object_mask),
    }
    part_rows = [{"image_id": image_id, "part": part, "rle": encode(mask)} for part, mask in s.parts.items()]
    return image_row, part_rows


def generate_tables(cfg: SpuriousWorldConfig, splits: Sequence[str] = ("train", "val", "test")):
    """Render every image of ``splits`` serially -> (images_df, parts_df) pandas DataFrames."""
    import pandas as pd

    images, parts = [], []
    for split in splits:
        for index in range(_split_size(cfg, split)):
            image_row, part_rows = sample_rows(cfg, split, index)
            images.append(image_row)
            parts.extend(part_rows)
    return pd.DataFrame(images), pd.DataFrame(parts, columns=["image_id", "part", "rle"])


def train_statistics(cfg: SpuriousWorldConfig, train: Any) -> dict[str, float]:
    """The measured shortcut of a rendered train split (a DataFrame with ``label``, ``background``): the
    share of images on their class's own background."""
    own = np.asarray(cfg.backgrounds, dtype=object)[train["label"].to_numpy()]
    return {"train_cooccurrence": float(np.mean(train["background"].to_numpy() == own))}


DATA_KINDS.add(
    "spuriousworld",
    sample_rows,
    SpuriousWorldConfig,
    tables=("parts",),
    classes=lambda cfg: list(cfg.classes),
    shortcut_column="background",
    statistics=train_statistics,
)
