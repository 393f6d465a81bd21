"""Every loss against values worked out by hand on a 2x2 image."""

from __future__ import annotations

import math

import pytest
import torch

from unspur.config import LossConfig
from unspur.losses import LOSSES, get_loss

EPS = 1e-6
PHI = torch.tensor([[[0.9, 0.2], [0.5, 0.1]]])
MASK = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
LOGITS = torch.tensor([[2.0, 0.0, -1.0]])
CLS_T1 = math.log(1 + math.exp(-2) + math.exp(-3))  # CE(logits, argmax = 0)


def _call(name: str, phi=PHI, masks=MASK, **kw):
    cfg = LossConfig(name=name, **kw.pop("cfg", {}))
    return get_loss(name).fn(
        logits=kw.pop("logits", LOGITS), labels=torch.tensor([1]), phi=phi, masks=masks, cfg=cfg, **kw
    )


def test_erm_is_cross_entropy_on_labels() -> None:
    out = _call("erm")
    assert out["loss"].item() == pytest.approx(math.log(math.exp(2) + 1 + math.exp(-1)), rel=1e-6)
    assert set(out) == {"loss", "ce"}


@pytest.mark.parametrize("normalize", ["region", "image"])
def test_cft_terms(normalize: str) -> None:
    out = _call("cft", cfg={"normalize": normalize})
    pos = -(math.log(0.9 + EPS) + math.log(0.5 + EPS))
    neg = -(math.log(0.8 + EPS) + math.log(0.9 + EPS))
    div_pos, div_neg = (2, 2) if normalize == "region" else (4, 4)
    concept, non = pos / div_pos, neg / div_neg
    align = 0.5 * concept + 1.2 * non
    assert out["concept"].item() == pytest.approx(concept, rel=1e-6)
    assert out["non_concept"].item() == pytest.approx(non, rel=1e-6)
    assert out["align"].item() == pytest.approx(align, rel=1e-6)
    assert out["cls"].item() == pytest.approx(CLS_T1, rel=1e-6)
    assert out["kl"].item() == 0.0 and out["n_no_mask"].item() == 0
    assert out["loss"].item() == pytest.approx(0.8 * align + 0.2 * CLS_T1, rel=1e-6)


@pytest.mark.parametrize("name", ["cft", "robustvit"])
def test_mask_grid_makes_every_cell_touching_the_mask_wholly_concept(name: str) -> None:
    phi = torch.rand(1, 4, 4)
    thin = torch.zeros(1, 4, 4)
    thin[0, 0, 1] = 1.0  # one pixel of the top-left 2x2 cell
    thin[0, 3, 3] = 1.0  # one pixel of the bottom-right cell
    cells = torch.zeros(1, 4, 4)
    cells[0, :2, :2] = 1.0
    cells[0, 2:, 2:] = 1.0
    pooled = _call(name, phi=phi, masks=thin, cfg={"mask_grid": 2})
    by_hand = _call(name, phi=phi, masks=cells)
    for key in by_hand:
        assert pooled[key].item() == pytest.approx(by_hand[key].item(), rel=1e-6), key
    assert _call(name, phi=phi, masks=thin)["align"].item() != pytest.approx(pooled["align"].item())
    with pytest.raises(ValueError, match="mask_grid 3"):
        _call(name, phi=phi, masks=thin, cfg={"mask_grid": 3})


def test_cft_gradient_on_phi_and_temperature() -> None:
    phi = PHI.clone().requires_grad_(True)
    _call("cft", phi=phi)["loss"].backward()
    assert phi.grad[0, 0, 0].item() == pytest.approx(0.8 * 0.5 * (-1 / (0.9 + EPS)) / 2, rel=1e-5)
    assert phi.grad[0, 0, 1].item() == pytest.approx(0.8 * 1.2 * (1 / (0.8 + EPS)) / 2, rel=1e-5)
    out = _call("cft", cfg={"temperature": 2.0})
    assert out["cls"].item() == pytest.approx(math.log(1 + math.exp(-1) + math.exp(-1.5)), rel=1e-6)


def test_cft_skips_and_counts_images_without_mask() -> None:
    phi = torch.cat([PHI, torch.full((2, 2, 2), 0.3)])
    masks = torch.cat([MASK, torch.zeros(1, 2, 2), MASK])
    logits = LOGITS.repeat(3, 1)
    out = _call("cft", phi=phi, masks=masks, logits=logits, has_mask=torch.tensor([True, True, False]))
    assert out["n_no_mask"].item() == 2
    only_first = _call("cft")
    assert out["concept"].item() == pytest.approx(only_first["concept"].item(), rel=1e-6)
    none = _call("cft", masks=torch.zeros(1, 2, 2), phi=PHI.clone().requires_grad_(True))
    assert none["align"].item() == 0.0 and none["loss"].item() == pytest.approx(0.2 * CLS_T1, rel=1e-6)


def test_kl_guard() -> None:
    out = _call("cft", cfg={"lambda_kl": 0.5}, base_logits=torch.zeros(1, 3))
    logp = torch.log_softmax(LOGITS, 1)[0].tolist()
    kl = sum((1 / 3) * (math.log(1 / 3) - lp) for lp in logp)
    assert out["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.8 * out["align"].item() + 0.2 * CLS_T1 + 0.5 * kl, rel=1e-5)
    with pytest.raises(ValueError, match="lambda_kl > 0 needs base_logits"):
        _call("cft", cfg={"lambda_kl": 0.5})


def test_robustvit_terms() -> None:
    out = _call("robustvit")
    bg = (0.2**2 + 0.1**2) / 4
    fg = ((0.9 - 1) ** 2 + (0.5 - 1) ** 2) / 4
    assert out["bg"].item() == pytest.approx(bg, rel=1e-5)
    assert out["fg"].item() == pytest.approx(fg, rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.8 * (2 * bg + 0.3 * fg) + 0.2 * CLS_T1, rel=1e-5)


def _fake_output(name: str) -> torch.Tensor:
    """A plausible model output called ``name`` for a batch of 4 (3 classes, 8x8 maps, D = 5)."""
    if name == "relevance":
        return torch.rand(4, 8, 8)
    if name.endswith("logit_scale"):
        return torch.tensor(10.0)
    if name == "region_features":  # 2 regions per image
        return torch.nn.functional.normalize(torch.randn(4, 2, 5), dim=-1)
    if name == "class_text_features":
        return torch.nn.functional.normalize(torch.randn(3, 5), dim=-1)
    if name.endswith("features"):
        return torch.nn.functional.normalize(torch.randn(4, 5), dim=1)
    return torch.randn(4, 3)  # logits, base_logits


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registry_contract(name: str) -> None:
    """Every loss runs through its spec on the outputs it declares and the batch it declares (plus
    the epoch the loop adds); its terms are finite scalars and the trained outputs get gradients."""
    torch.manual_seed(0)
    spec, cfg = get_loss(name), LossConfig(name=name)
    outputs = {
        k: _fake_output(k).requires_grad_(not k.startswith(("base_", "teacher_")))
        for k in spec.outputs_for(cfg)
    }
    batch = {
        "label": torch.tensor([0, 1, 2, 0]),
        "mask": (torch.rand(4, 8, 8) > 0.5).float(),
        "has_mask": torch.ones(4, dtype=torch.bool),
        "region_spurious": torch.tensor([[True, False]] * 4),
        "region_tied": torch.tensor([[0, -1]] * 4),
        "region_valid": torch.ones(4, 2, dtype=torch.bool),
        "erased_tied": torch.tensor([0, -1, 1, 2]),
        "pasted_tied": torch.tensor([-1, 0, -1, -1]),
        "epoch": 0,
        "epochs": 2,
    }
    out = spec(outputs, batch, cfg)
    assert "loss" in out and all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    trained = [k for k, v in outputs.items() if v.requires_grad and k != "logit_scale"]
    assert trained and all(outputs[k].grad is not None for k in trained), trained


@pytest.mark.parametrize("name", [n for n, s in LOSSES.items() if s.needs_relevance])
def test_relevance_losses_reject_bad_inputs(name: str) -> None:
    with pytest.raises(ValueError, match="masks shape"):
        _call(name, masks=torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="needs phi"):
        _call(name, phi=None)
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss("focal")
