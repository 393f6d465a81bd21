"""SpuriousWorld: split statistics, determinism, named part masks, table rows, config errors."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from unspur.config import ConfigError, SpuriousWorldConfig, validate_config
from unspur.data.spuriousworld import (
    BACKGROUNDS,
    CLASS_PARTS,
    generate_tables,
    render_sample,
    sample_rows,
)
from unspur.masks import decode


def _cfg(**kw) -> SpuriousWorldConfig:
    return SpuriousWorldConfig(**{"n_train": 64, "n_val": 32, "n_test": 32, **kw})


def test_train_background_matches_class_with_probability_rho():
    cfg = _cfg(rho=0.8, n_train=400, seed=3)
    samples = [render_sample(cfg, "train", i) for i in range(cfg.n_train)]
    own = np.mean([s.background == cfg.backgrounds[s.label] for s in samples])
    assert abs(own - 0.8) < 0.07
    assert set(Counter(s.label for s in samples)) == set(range(len(cfg.classes)))


def test_rho_one_and_zero_are_exact():
    assert all(
        render_sample(_cfg(rho=1.0), "train", i).background
        == _cfg().backgrounds[render_sample(_cfg(rho=1.0), "train", i).label]
        for i in range(40)
    )
    cfg = _cfg(rho=0.0)
    assert not any(
        render_sample(cfg, "train", i).background == cfg.backgrounds[render_sample(cfg, "train", i).label]
        for i in range(40)
    )


def test_val_and_test_are_balanced_over_every_group():
    cfg = _cfg(n_test=64)
    groups = Counter(render_sample(cfg, "test", i).group for i in range(cfg.n_test))
    expected = {f"{c}/{b}" for c in cfg.classes for b in cfg.backgrounds}
    assert set(groups) == expected
    assert set(groups.values()) == {64 // len(expected)}


def test_extra_backgrounds_are_used_off_class():
    cfg = _cfg(classes=["bird", "tree"], backgrounds=["water", "grass", "brick"], rho=0.0)
    seen = {render_sample(cfg, "train", i).background for i in range(60)}
    assert "brick" in seen


def test_rendering_is_deterministic_per_seed_split_index():
    cfg = _cfg()
    a, b = render_sample(cfg, "train", 7), render_sample(cfg, "train", 7)
    assert np.array_equal(a.image, b.image) and a.group == b.group
    assert all(np.array_equal(a.parts[p], b.parts[p]) for p in a.parts)
    assert not np.array_equal(a.image, render_sample(cfg, "val", 7).image)
    assert not np.array_equal(a.image, render_sample(_cfg(seed=1), "train", 7).image)


@pytest.mark.parametrize("class_name", sorted(CLASS_PARTS))
def test_parts_are_the_named_ones_disjoint_and_make_up_the_object(class_name):
    cfg = _cfg(classes=[class_name], backgrounds=["sand"])
    for i in range(8):
        s = render_sample(cfg, "test", i)
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert tuple(s.parts) == CLASS_PARTS[class_name]
        stacked = np.stack(list(s.parts.values()))
        assert (stacked.sum(0) <= 1).all(), "part masks overlap"
        assert np.array_equal(stacked.any(0), s.object_mask)
        assert 0.02 < s.object_mask.mean() < 0.6
        assert sum(m.any() for m in s.parts.values()) >= 2


def test_object_is_painted_on_its_mask_only():
    cfg = _cfg()
    s = render_sample(cfg, "test", 0)
    plain = render_sample(_cfg(contrast=0.01), "test", 0)
    diff = np.abs(s.image.astype(int) - plain.image.astype(int)).sum(-1)
    assert diff[~s.object_mask].max() == 0
    assert diff[s.object_mask].mean() > 20


def test_plate_puts_the_object_on_a_uniform_card_grown_by_the_margin():
    margin = 8
    s = render_sample(_cfg(plate_margin=margin), "test", 3)
    ys, xs = np.nonzero(s.object_mask)
    box = np.zeros_like(s.object_mask)
    box[
        max(0, ys.min() - margin) : ys.max() + 1 + margin, max(0, xs.min() - margin) : xs.max() + 1 + margin
    ] = True
    card = s.image[box & ~s.object_mask].astype(float)
    assert len(card) > 0 and card.std() < 8 and abs(card.mean() - 0.55 * 255) < 3  # grey + pixel noise only
    plain = render_sample(_cfg(plate_margin=0), "test", 3)  # the same sample without the card
    assert np.array_equal(s.image[~box], plain.image[~box])
    assert np.array_equal(s.object_mask, plain.object_mask)


def test_color_jitter_zero_paints_each_part_one_colour_up_to_shading():
    still = render_sample(_cfg(color_jitter=0.0), "test", 0)
    other = render_sample(_cfg(color_jitter=0.0), "test", 4)
    jittered = render_sample(_cfg(color_jitter=0.3), "test", 0)
    part = CLASS_PARTS[still.class_name][0]
    mean = {name: s.image[s.parts[part]].mean(0) for name, s in (("a", still), ("j", jittered))}
    if other.class_name == still.class_name:
        assert np.abs(other.image[other.parts[part]].mean(0) - mean["a"]).max() < 8
    assert np.abs(mean["j"] - mean["a"]).max() > 8


def test_sample_rows_match_the_rendered_sample():
    cfg = _cfg()
    row, part_rows = sample_rows(cfg, "val", 5)
    s = render_sample(cfg, "val", 5)
    assert row["image_id"] == "val-000005" and row["split"] == "val"
    assert (row["label"], row["class_name"], row["background"], row["group"]) == (
        s.label,
        s.class_name,
        s.background,
        s.group,
    )
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(row["image"]))), s.image)
    assert np.array_equal(decode(row["object_rle"]), s.object_mask)
    assert [r["part"] for r in part_rows] == list(CLASS_PARTS[s.class_name])
    for r in part_rows:
        assert r["image_id"] == "val-000005"
        assert np.array_equal(decode(r["rle"]), s.parts[r["part"]])


def test_generate_tables_row_counts():
    cfg = _cfg(n_train=10, n_val=6, n_test=4)
    images, parts = generate_tables(cfg)
    assert len(images) == 20 and images["image_id"].is_unique
    assert images["split"].value_counts().to_dict() == {"train": 10, "val": 6, "test": 4}
    assert len(parts) == 3 * 20 and list(parts.columns) == ["image_id", "part", "rle"]


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"classes": ["bird", "unicorn"]}, "unknown classes"),
        ({"backgrounds": ["water", "lava", "sand", "snow"]}, "unknown backgrounds"),
        ({"backgrounds": ["water", "grass"]}, "at least one background per class"),
        ({"rho": 1.5}, "rho"),
        ({"n_train": 0}, "n_train"),
        ({"image_size": -4}, "image_size"),
        ({"contrast": 0.0}, "contrast"),
        ({"plate_margin": -1}, "plate_margin"),
        ({"color_jitter": -0.1}, "color_jitter"),
        ({"classes": ["bird", "bird"]}, "without repeats"),
        ({"blur": -1.0}, "blur"),
        ({"background_phrases": {"lava": ["hot rock"]}}, "unknown backgrounds"),
        ({"background_phrases": {"sand": []}}, "no phrases"),
    ],
)
def test_config_errors_name_the_bad_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        validate_config(SpuriousWorldConfig, bad)


def test_every_background_renders_in_range():
    rng = np.random.default_rng(0)
    for name, fn in BACKGROUNDS.items():
        tex = fn(rng, 32)
        assert tex.shape == (32, 32, 3), name
        assert tex.min() >= 0 and tex.max() <= 1, name


def test_rows_carry_class_and_descriptive_captions() -> None:
    cfg = SpuriousWorldConfig(image_size=32, n_train=2, n_val=1, n_test=1)
    row, _ = sample_rows(cfg, "train", 0)
    assert row["caption"] == f"a photo of a {row['class_name']}."
    assert row["caption_descriptive"] == f"a photo of a {row['class_name']} on {row['background']}."
    again, _ = sample_rows(cfg, "train", 0)
    assert again["caption"] == row["caption"] and again["image"] == row["image"]
    two = cfg.model_copy(update={"caption_templates": ["a {cls}", "an image of a {cls}"]})
    assert (
        sample_rows(two, "train", 1)[0]["caption"]
        == f"an image of a {sample_rows(two, 'train', 1)[0]['class_name']}"
    )
    assert sample_rows(two, "train", 0)[0]["image"] == row["image"]  # captions never change the images
    with pytest.raises(ConfigError, match="descriptive_templates"):
        validate_config(SpuriousWorldConfig, {"descriptive_templates": ["a {cls} on {ground}"]})


def test_background_phrases_word_the_background_and_blur_softens_the_image() -> None:
    templates = ["a photo of a {cls} {background}.", "a {cls} {background}."]
    phrases = {b: [f"on {b}", f"near {b}", f"by {b}"] for b in ("water", "grass", "sand", "snow")}
    cfg = _cfg(image_size=32, rho=0.25, descriptive_templates=templates, background_phrases=phrases)
    seen = {}
    for index in range(24):
        row, _ = sample_rows(cfg, "train", index)
        phrase = phrases[row["background"]][(index // 2) % 3]
        assert row["caption_descriptive"] == templates[index % 2].format(
            cls=row["class_name"], background=phrase
        )
        seen.setdefault(row["background"], set()).add(phrase)
    assert any(len(p) > 1 for p in seen.values())  # phrases vary along the index
    sharp = render_sample(_cfg(image_size=32), "train", 0).image.astype(float)
    soft = render_sample(_cfg(image_size=32, blur=1.5), "train", 0).image.astype(float)
    assert np.abs(np.diff(soft, axis=1)).mean() < 0.7 * np.abs(np.diff(sharp, axis=1)).mean()
    assert abs(soft.mean() - sharp.mean()) < 2.0  # blurred, not darkened
