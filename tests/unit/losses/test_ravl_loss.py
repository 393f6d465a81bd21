"""RaVL's region-aware loss: its pull and push terms (both forms) against hand values, the total,
empty sets."""

from __future__ import annotations

import math

import pytest
import torch

from unspur.losses import LOSSES, RavlLossConfig
from unspur.losses.flyp import clip_contrastive
from unspur.losses.ravl import contribution_push, region_terms

TEXT = torch.eye(2)  # class 0 text along x, class 1 along y


def _flags(spurious, tied, valid=None):
    spurious = torch.tensor(spurious)
    return spurious, torch.tensor(tied), torch.ones_like(spurious) if valid is None else torch.tensor(valid)


def test_pull_and_push_by_hand():
    # one image of class 0: region 0 along x (not spurious), region 1 along y (spurious, tied to 1)
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    spurious, tied, valid = _flags([[False, True]], [[-1, 1]])
    pull, push = region_terms(regions, TEXT, 1.0, torch.tensor([0]), spurious, tied, valid)
    # p(region 0) = softmax([1, 0]) -> -log p[0] = log(1 + e^-1)
    assert pull.item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    # p(region 1) = softmax([0, 1]) -> -log(1 - p[1]) = -log(1 / (1 + e)) = log(1 + e)
    assert push.item() == pytest.approx(math.log(1 + math.e), rel=1e-6)


def test_scale_invalid_regions_and_means():
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])
    labels = torch.tensor([0, 1])
    spurious, tied, valid = _flags(
        [[False, False, True], [False, True, False]],
        [[-1, -1, 1], [-1, 0, -1]],
        [[True, True, True], [True, True, False]],
    )
    pull, push = region_terms(regions, TEXT, 2.0, labels, spurious, tied, valid)
    right, wrong = math.log(1 + math.exp(-2)), math.log(1 + math.exp(2))  # -log p of the near / far class
    # pull set: (0,0) class 0 along x: right; (0,1) class 0 along y: wrong; (1,0) class 1 along y: right
    assert pull.item() == pytest.approx((right + wrong + right) / 3, rel=1e-6)
    # push set: (0,2) along x tied to 1: -log(1 - p1) = -log p0 = right; (1,1) along y tied to 0: right
    assert push.item() == pytest.approx(right, rel=1e-6)


def test_empty_sets_contribute_zero_and_push_stays_finite():
    regions = torch.tensor([[[1.0, 0.0]]])
    spurious, tied, valid = _flags([[True]], [[-1]])  # spurious but tied to no class: in neither set
    pull, push = region_terms(regions, TEXT, 1.0, torch.tensor([0]), spurious, tied, valid)
    assert pull.item() == 0.0 and push.item() == 0.0
    spurious, tied, valid = _flags([[True]], [[0]])
    _, push = region_terms(regions, TEXT, 1000.0, torch.tensor([0]), spurious, tied, valid)
    assert torch.isfinite(push) and push.item() == pytest.approx(1000.0, rel=1e-4)


def test_total_is_flyp_plus_weighted_terms_and_gradients_reach_regions():
    torch.manual_seed(0)
    norm = torch.nn.functional.normalize
    image, text = norm(torch.randn(3, 4), dim=1), norm(torch.randn(3, 4), dim=1)
    regions = norm(torch.randn(3, 2, 4), dim=-1).requires_grad_(True)
    heads = norm(torch.randn(2, 4), dim=-1).requires_grad_(True)
    cfg = RavlLossConfig(lambda_pull=0.5, lambda_push=2.0, push="probability")
    batch = {
        "label": torch.tensor([0, 1, 0]),
        "region_spurious": torch.tensor([[True, False]] * 3),
        "region_tied": torch.tensor([[0, -1]] * 3),
        "region_valid": torch.ones(3, 2, dtype=torch.bool),
        "erased_tied": torch.tensor([0, -1, 1]),
        "pasted_tied": torch.tensor([-1, -1, -1]),
    }
    outputs = {
        "image_features": image,
        "text_features": text,
        "logit_scale": torch.tensor(10.0),
        "region_features": regions,
        "class_text_features": heads,
        "erased_features": norm(torch.randn(3, 4), dim=1),
        "pasted_features": norm(torch.randn(3, 4), dim=1),
    }
    out = LOSSES["ravl"](outputs, batch, cfg)
    pull, push = region_terms(
        regions,
        heads,
        10.0,
        batch["label"],
        batch["region_spurious"],
        batch["region_tied"],
        batch["region_valid"],
    )
    expected = clip_contrastive(image, text, 10.0) + 0.5 * pull + 2.0 * push
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["pull"].item() == pytest.approx(pull.item()) and out["push"].item() == pytest.approx(
        push.item()
    )
    out["loss"].backward()
    assert regions.grad.abs().sum() > 0 and heads.grad.abs().sum() > 0
    contribution = LOSSES["ravl"](outputs, batch, cfg.model_copy(update={"push": "contribution"}))
    push = contribution_push(image, outputs["erased_features"], heads, 10.0, batch["erased_tied"])
    assert contribution["push"].item() == pytest.approx(push.item())
    assert contribution["loss"].item() == pytest.approx(
        (expected - 2.0 * out["push"] + 2.0 * push).item(), rel=1e-6
    )


def test_contribution_push_by_hand():
    # image 0 (tied to class 0): full image along x, erased image at 45 degrees -> the region adds
    # (1 - 1/sqrt 2) to the class-0 similarity; image 1 (tied to 1): erasing raises class 1 -> 0;
    # image 2: no spurious region, not counted
    r = 1 / math.sqrt(2)
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    erased = torch.tensor([[r, r], [r, r], [1.0, 0.0]])
    push = contribution_push(image, erased, TEXT, 3.0, torch.tensor([0, 1, -1]))
    assert push.item() == pytest.approx((3.0 * (1 - r) + 0.0) / 2, rel=1e-6)
    assert contribution_push(image, erased, TEXT, 3.0, torch.tensor([-1, -1, -1])).item() == 0.0


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"\(B, R, D\)"):
        region_terms(torch.ones(2, 4), TEXT, 1.0, torch.tensor([0, 1]), *_flags([[True]], [[0]]))


def test_contribution_push_covers_pasted_views_against_the_detached_image():
    # image 0: natural pair as in the test above (region adds 1 - 1/sqrt 2 to class 0); image 2
    # has no spurious region but a pasted view tied to class 1 that adds 1 to class 1's
    # similarity; image 1's pasted view lowers class 0's similarity -> 0; both hinge terms share
    # one mean over the three pairs
    r = 1 / math.sqrt(2)
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    erased = torch.tensor([[r, r], [r, r], [1.0, 0.0]])
    pasted = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], requires_grad=True)
    push = contribution_push(
        image, erased, TEXT, 3.0, torch.tensor([0, -1, -1]), pasted, torch.tensor([-1, 0, 1])
    )
    assert push.item() == pytest.approx((3.0 * (1 - r) + 0.0 + 3.0 * 1.0) / 3, rel=1e-6)
    push.backward()
    assert image.grad[2].abs().sum() == 0  # the clean image is the pasted view's fixed reference
    assert pasted.grad[2].abs().sum() > 0 and pasted.grad[0].abs().sum() == 0
    none = contribution_push(image, erased, TEXT, 3.0, torch.tensor([-1] * 3), pasted, torch.tensor([-1] * 3))
    assert none.item() == 0.0


def test_pasted_views_are_refused_where_no_loss_reads_them():
    from unspur.config import ConfigError, FinetuneConfig, load_config

    ravl = [
        "loss.name=ravl",
        "data.images=[t.parquet]",
        "data.regions=flags.parquet",
        "data.region_paste=true",
    ]
    assert load_config(FinetuneConfig, None, ravl).data.region_paste
    with pytest.raises(ConfigError, match="would ignore them"):
        load_config(FinetuneConfig, None, [*ravl, "loss.push=probability"])
    with pytest.raises(ConfigError, match="would ignore them"):
        load_config(
            FinetuneConfig, None, ["loss.name=flyp", "data.images=[t.parquet]", "data.region_paste=true"]
        )


def test_margin_target_measures_the_pasted_region_against_the_image_own_class():
    # one image of class 1 (text along y) with a pasted view tied to class 0 (along x): the view
    # moves the embedding by (+0.5, -0.5), raising class 0 by 0.5 and lowering class 1 by 0.5
    image = torch.tensor([[0.0, 1.0]])
    pasted = torch.tensor([[0.5, 0.5]])
    args = (image, image, TEXT, 2.0, torch.tensor([-1]), pasted, torch.tensor([0]))
    assert contribution_push(*args).item() == pytest.approx(2.0 * 0.5)
    assert contribution_push(*args, torch.tensor([1])).item() == pytest.approx(2.0 * (0.5 + 0.5))
    cfg = RavlLossConfig(paste_target="margin")
    assert cfg.paste_target == "margin" and RavlLossConfig().paste_target == "tied"
