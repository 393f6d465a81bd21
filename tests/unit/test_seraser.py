"""SEraser's views and tuning loop on a tiny random CLIP: fills, episodic reset (order and batch
do not change an image's result), the cached loop equals the naive one, frozen weights; the
verdict of ``unspur adapt``'s check against hand values."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from unspur.config import AdaptCheckConfig, SEraserConfig
from unspur.seraser import FILLS, PromptTuner, check_verdict, fill_image, make_views

CLASSES = ["bird", "airplane", "bicycle", "tree"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is faster and the same every run
    yield
    torch.set_num_threads(threads)


def _batch(n: int = 3) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(n, 3, 32, 32, generator=gen)
    masks = torch.zeros(n, 32, 32, dtype=torch.bool)
    for i in range(n):
        masks[i, 4 + 2 * i : 20 + 2 * i, 8:24] = True
    return images, masks, [f"img-{i}" for i in range(n)]


def test_views_and_fills() -> None:
    image = torch.rand(3, 8, 8)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = True
    fg, bg = make_views(image, mask, SEraserConfig())
    assert fg.shape == (1, 3, 8, 8) and bg.shape == (2, 3, 8, 8)
    assert torch.equal(fg[0], image * mask) and torch.equal(bg[0], image * ~mask)  # black, as published
    assert torch.equal(bg[1], torch.zeros(3, 8, 8))  # the all-black image
    grey_fg, grey_bg = make_views(image, mask, SEraserConfig(fill="grey"))
    assert torch.all(grey_fg[0][:, ~mask] == 0.5) and torch.equal(grey_fg[0][:, mask], image[:, mask])
    assert torch.all(grey_bg[1] == 0.5)
    split_fg, split_bg = make_views(image, mask, SEraserConfig(fg_fill="grey"))  # background views stay black
    assert torch.equal(split_fg, grey_fg) and torch.equal(split_bg, bg)
    split_fg, split_bg = make_views(image, mask, SEraserConfig(fill="grey", bg_fill="black"))
    assert torch.equal(split_fg, grey_fg) and torch.equal(split_bg, bg)
    mean = fill_image(image, "mean")
    torch.testing.assert_close(mean[:, 0, 0], image.mean(dim=(1, 2)))
    blurred = fill_image(image, "blur", 0.2)
    assert blurred.shape == image.shape and blurred.std() < image.std()
    assert set(get_args(SEraserConfig.model_fields["fill"].annotation)) == set(FILLS)
    aug = SEraserConfig(augment_views=2, seed=3)
    a, b = make_views(image, mask, aug, "x"), make_views(image, mask, aug, "x")
    assert a[0].shape == (3, 3, 8, 8) and a[1].shape == (4, 3, 8, 8)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], make_views(image, mask, aug, "y")[0])


@pytest.mark.parametrize("lambda_label", [0.0, 1.0])
def test_episodes_are_reset_per_image_whatever_the_order(tiny_clip, lambda_label) -> None:
    model, tokenizer = tiny_clip
    cfg = SEraserConfig(steps=5, augment_views=1, lambda_label=lambda_label)
    tuner = PromptTuner(model, tokenizer, CLASSES, cfg)
    images, masks, ids = _batch()
    forward = tuner.run(images, masks, ids)
    backward = tuner.run(images.flip(0), masks.flip(0), ids[::-1])
    alone = [tuner.run(images[i : i + 1], masks[i : i + 1], ids[i : i + 1]) for i in range(3)]
    assert torch.equal(forward.tuned.argmax(1), backward.tuned.flip(0).argmax(1))
    torch.testing.assert_close(forward.tuned, backward.tuned.flip(0), rtol=1e-4, atol=1e-4)
    for i, result in enumerate(alone):
        torch.testing.assert_close(forward.tuned[i], result.tuned[0], rtol=1e-4, atol=1e-4)
    assert torch.all(forward.loss_end < forward.loss_start)  # the objective goes down
    assert all(not p.requires_grad for p in model.parameters())
    untuned = PromptTuner(model, tokenizer, CLASSES, SEraserConfig(steps=0)).run(images, masks, ids)
    assert not torch.equal(untuned.tuned, forward.tuned) and untuned.loss_start.isnan().all()


def test_an_episode_stops_below_the_floor_and_keeps_that_context(tiny_clip) -> None:
    model, tokenizer = tiny_clip
    images, masks, ids = _batch()
    cfg = SEraserConfig(steps=8, augment_views=1)
    full = PromptTuner(model, tokenizer, CLASSES, cfg).run(images, masks, ids)
    untuned = PromptTuner(model, tokenizer, CLASSES, cfg.model_copy(update={"steps": 0})).run(
        images, masks, ids
    )
    high = cfg.model_copy(update={"stop_below": float(full.loss_start.max()) + 1})
    at_once = PromptTuner(model, tokenizer, CLASSES, high).run(images, masks, ids)
    torch.testing.assert_close(at_once.tuned, untuned.tuned)  # every episode stops before its first update
    torch.testing.assert_close(at_once.loss_end, full.loss_start)
    floor = (
        float(full.loss_end.min() + full.loss_start.min()) / 2
    )  # some episodes reach it, not necessarily all
    mid = cfg.model_copy(update={"stop_below": floor})
    tuner = PromptTuner(model, tokenizer, CLASSES, mid)
    stopped = tuner.run(images, masks, ids)
    reached = stopped.loss_end <= floor
    assert reached.any() and not torch.equal(stopped.tuned, full.tuned)
    assert torch.all(
        stopped.loss_end[reached] > full.loss_end[reached] - 1e-6
    )  # stopped early: less far down
    for i in range(len(ids)):  # per episode: the same as tuned alone
        alone = tuner.run(images[i : i + 1], masks[i : i + 1], ids[i : i + 1])
        torch.testing.assert_close(stopped.tuned[i], alone.tuned[0], rtol=1e-4, atol=1e-4)


def test_cached_and_naive_loops_agree(tiny_clip) -> None:
    model, tokenizer = tiny_clip
    cfg = SEraserConfig(steps=4, augment_views=2, fg_term="kl_reference", fill="mean")
    tuner = PromptTuner(model, tokenizer, CLASSES, cfg)
    images, masks, ids = _batch(2)
    cached = tuner.run(images, masks, ids)
    naive = tuner.run(images, masks, ids, cached=False)
    assert torch.equal(cached.tuned, naive.tuned) and torch.equal(cached.zero_shot, naive.zero_shot)
    assert torch.equal(cached.loss_end, naive.loss_end)
    again = PromptTuner(model, tokenizer, CLASSES, cfg).run(images, masks, ids)
    assert torch.equal(cached.tuned, again.tuned)  # seeded: the same every run


@pytest.mark.parametrize(
    ("after", "check", "trusted"),
    [
        ({"acc": 0.75, "wga": 0.45}, AdaptCheckConfig(), True),  # wga up, acc up
        ({"acc": 0.68, "wga": 0.30}, AdaptCheckConfig(), True),  # wga level, acc -0.02: at the bound
        ({"acc": 0.67, "wga": 0.45}, AdaptCheckConfig(), False),  # acc -0.03
        ({"acc": 0.67, "wga": 0.45}, AdaptCheckConfig(max_drop=None), True),
        ({"acc": 0.75, "wga": 0.275}, AdaptCheckConfig(), False),  # wga down
        ({"acc": 0.75, "wga": 0.35}, AdaptCheckConfig(min_gain=0.05), True),  # 0.30 + 0.05 admits 0.35
        ({"acc": 0.75, "wga": 0.325}, AdaptCheckConfig(min_gain=0.05), False),
    ],
)
def test_check_verdict_against_hand_values(after, check, trusted) -> None:
    before = {"acc": 0.70, "wga": 0.30}
    verdict, note = check_verdict(before, after, check)
    assert verdict is trusted
    assert f"wga 0.300 -> {after['wga']:.3f}" in note and f"acc 0.700 -> {after['acc']:.3f}" in note
    assert ("tuned predictions kept" in note) is trusted and (
        "kept the zero-shot head" in note
    ) is not trusted
