"""SEraser's objective against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from unspur.losses.seraser import entropy, foreground_label_ce, kl_to_uniform, seraser_objective


def test_terms_against_hand_values() -> None:
    # p = (3/4, 1/4): KL(U || p) = -log 2 - (log 3/4 + log 1/4) / 2; H(p) = -(3/4 log 3/4 + 1/4 log 1/4)
    logits = torch.tensor([[[math.log(3.0), 0.0]]])
    kl = -math.log(2) - 0.5 * (math.log(0.75) + math.log(0.25))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert kl_to_uniform(logits).item() == pytest.approx(kl, abs=1e-6)
    assert entropy(logits).item() == pytest.approx(h, abs=1e-6)
    assert kl_to_uniform(torch.zeros(1, 1, 5)).item() == pytest.approx(0.0, abs=1e-7)
    assert entropy(torch.zeros(1, 1, 5)).item() == pytest.approx(math.log(5), abs=1e-6)
    # views are averaged: a uniform view and the (3/4, 1/4) view
    two = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    assert kl_to_uniform(two).item() == pytest.approx(kl / 2, abs=1e-6)


def test_objective_sums_episodes_and_weights_terms() -> None:
    fg = torch.tensor([[[math.log(3.0), 0.0]], [[0.0, 0.0]]], requires_grad=True)  # (P=2, Vf=1, C=2)
    bg = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])  # (2, 2, 2)
    kl = -math.log(2) - 0.5 * (math.log(0.75) + math.log(0.25))
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    out = seraser_objective(fg, bg, lambda_bg=2.0, lambda_fg=0.5)
    torch.testing.assert_close(out["kl_bg"], torch.tensor([kl / 2, 0.0]))
    torch.testing.assert_close(out["entropy_fg"], torch.tensor([h, math.log(2)]))
    assert out["loss"].item() == pytest.approx(2.0 * kl / 2 + 0.5 * (h + math.log(2)), abs=1e-6)
    out["loss"].backward()  # episode 1's gradient does not depend on episode 0
    alone = torch.tensor([[[0.0, 0.0]]], requires_grad=True)
    seraser_objective(alone, bg[1:], lambda_bg=2.0, lambda_fg=0.5)["loss"].backward()
    torch.testing.assert_close(fg.grad[1], alone.grad[0])


def test_kl_reference_variant() -> None:
    fg = torch.tensor([[[0.0, 0.0]]])
    ref = torch.tensor([[[math.log(3.0), 0.0]]])
    bg = torch.zeros(1, 1, 2)
    # KL((3/4, 1/4) || (1/2, 1/2)) = 3/4 log(3/2) + 1/4 log(1/2)
    out = seraser_objective(fg, bg, fg_term="kl_reference", fg_reference_logits=ref)
    assert out["kl_fg"].item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    assert seraser_objective(ref, bg, fg_term="kl_reference", fg_reference_logits=ref)["kl_fg"].item() == (
        pytest.approx(0.0, abs=1e-7)
    )
    with pytest.raises(ValueError, match="fg_reference_logits"):
        seraser_objective(fg, bg, fg_term="kl_reference")
    with pytest.raises(ValueError, match="agree on P and C"):
        seraser_objective(fg, torch.zeros(1, 1, 3))


def test_label_term_pulls_the_raw_image_to_the_foreground_pseudo_label() -> None:
    # foreground views of episode 0 disagree; their mean logit picks class 1 (mean (0.5, 1.0))
    fg = torch.tensor([[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [1.0, 0.0]]])  # (P=2, Vf=2, C=2)
    raw = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]], requires_grad=True)  # p = (3/4, 1/4), (1/2, 1/2)
    bg = torch.zeros(2, 1, 2)
    ce = foreground_label_ce(raw, fg)  # labels 1 and 0: -log 1/4, -log 1/2
    torch.testing.assert_close(ce, torch.tensor([math.log(4.0), math.log(2.0)]))
    out = seraser_objective(fg, bg, raw_logits=raw, lambda_label=0.5)
    h = entropy(fg)
    assert out["loss"].item() == pytest.approx(
        float(h.sum()) + 0.5 * (math.log(4.0) + math.log(2.0)), abs=1e-6
    )
    torch.testing.assert_close(out["ce_raw"], ce.detach())
    out["loss"].backward()  # d CE / d raw = p - onehot, times lambda
    torch.testing.assert_close(raw.grad, 0.5 * torch.tensor([[0.75, -0.75], [-0.5, 0.5]]))
    assert "ce_raw" not in seraser_objective(fg, bg)
    with pytest.raises(ValueError, match="raw_logits"):
        seraser_objective(fg, bg, raw_logits=torch.zeros(2, 3), lambda_label=1.0)
