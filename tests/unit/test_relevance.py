"""Relevance maps: shapes, range, gradient flow into the attention maps, slow reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unspur.config import ModelConfig
from unspur.models import build_model, capture_attention
from unspur.relevance import RELEVANCE, relevance_map, rollout_from_attention

SMALL = {"depth": 3, "embed_dim": 48, "num_heads": 2}
VARIANTS = {
    "cls": {},
    "gap": {"class_token": False, "global_pool": "avg"},
    "registers": {"reg_tokens": 2},
}


def _model(variant: str = "cls", name: str = "vit_tiny_synth") -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        ModelConfig(name=name, num_classes=3, img_size=32, kwargs={**SMALL, **VARIANTS[variant]})
    )


def _slow_rollout(model: torch.nn.Module, images: torch.Tensor, n_prefix: int, cls_row: bool) -> torch.Tensor:
    """METHODS.md 1.3 with explicit loops over images, heads and layers (full R matrix)."""
    with capture_attention(model) as attn:
        logits = model(images)
    target = logits.argmax(1)
    score = sum(logits[b, target[b]] for b in range(len(images)))
    grads = torch.autograd.grad(score, attn, retain_graph=True)
    maps = []
    for b in range(len(images)):
        n = attn[0].shape[-1]
        r = torch.eye(n, dtype=images.dtype)
        for a_l, g_l in zip(attn, grads, strict=True):
            heads = [torch.clamp(g_l[b, h].detach() * a_l[b, h], min=0) for h in range(a_l.shape[1])]
            r = r + (sum(heads) / len(heads)) @ r
        row = r[0, n_prefix:] if cls_row else r[n_prefix:, n_prefix:].mean(0)
        side = int(row.numel() ** 0.5)
        up = F.interpolate(
            row.view(1, 1, side, side), size=images.shape[-2:], mode="bilinear", align_corners=False
        )[0, 0]
        maps.append((up - up.min()) / (up.max() - up.min()))
    return torch.stack(maps)


@pytest.mark.parametrize("method", sorted(RELEVANCE))
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_shapes_and_range(method: str, variant: str) -> None:
    model = _model(variant)
    logits, phi = relevance_map(model, torch.randn(3, 3, 32, 32), method=method)
    assert logits.shape == (3, 3) and phi.shape == (3, 32, 32)
    assert torch.isfinite(phi).all()
    assert phi.amin(dim=(1, 2)).allclose(torch.zeros(3)) and phi.amax(dim=(1, 2)).allclose(torch.ones(3))


@pytest.mark.parametrize(
    ("variant", "n_prefix", "cls_row"), [("cls", 1, True), ("gap", 0, False), ("registers", 3, True)]
)
def test_matches_slow_reference_values_and_gradients(variant: str, n_prefix: int, cls_row: bool) -> None:
    model = _model(variant).double()  # float64: the min-max scaling magnifies float32 rounding
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    _, phi = relevance_map(model, images)
    weight = model.blocks[0].attn.qkv.weight
    (grad_fast,) = torch.autograd.grad((phi * torch.linspace(0, 1, 32, dtype=phi.dtype)).sum(), weight)
    slow = _slow_rollout(model, images, n_prefix, cls_row)
    torch.testing.assert_close(phi, slow, atol=1e-9, rtol=1e-7)
    (grad_slow,) = torch.autograd.grad((slow * torch.linspace(0, 1, 32, dtype=phi.dtype)).sum(), weight)
    torch.testing.assert_close(grad_fast, grad_slow, atol=1e-8, rtol=1e-6)
    assert grad_fast.abs().sum() > 0


def test_gradient_flows_into_attention_maps_only_through_a() -> None:
    torch.manual_seed(1)
    attn = [torch.softmax(torch.randn(2, 2, 5, 5), -1).requires_grad_(True) for _ in range(2)]
    grads = [torch.randn(2, 2, 5, 5) for _ in range(2)]
    patches = rollout_from_attention(attn, grads, n_prefix=1, cls_row=True)
    assert patches.shape == (2, 4)
    patches.sum().backward()
    for a, g in zip(attn, grads, strict=True):
        assert a.grad is not None and a.grad.abs().sum() > 0
        # clamp(G * A, min=0): entries with a negative gradient weight get no gradient
        assert (a.grad[g < 0] == 0).all()


def test_target_changes_the_map_and_bad_target_is_an_error() -> None:
    model = _model()
    images = torch.randn(2, 3, 32, 32)
    _, phi0 = relevance_map(model, images, target=torch.tensor([0, 0]))
    _, phi1 = relevance_map(model, images, target=torch.tensor([1, 1]))
    assert not torch.allclose(phi0, phi1)
    with pytest.raises(ValueError, match="target must have shape"):
        relevance_map(model, images, target=torch.tensor([0]))
    with pytest.raises(ValueError, match="unknown relevance method"):
        relevance_map(model, images, method="gradcam++")


def test_frozen_model_and_no_grad_context_still_give_maps() -> None:
    model = _model(name="hybrid_tiny_synth").eval().requires_grad_(False)
    with torch.no_grad():
        logits, phi = relevance_map(model, torch.randn(2, 3, 32, 32))
    assert phi.shape == (2, 32, 32) and float(phi.detach().max()) == pytest.approx(1.0)
