"""Every registered model builds, classifies, and exposes its attention probabilities."""

from __future__ import annotations

import pytest
import torch

from unspur.config import ModelConfig
from unspur.models import MODELS, attention_modules, build_model, capture_attention, patch_grid, unwrap

SMALL = {"depth": 2, "embed_dim": 48, "num_heads": 2}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registered_model_forward_and_attention(name: str) -> None:
    model = build_model(ModelConfig(name=name, num_classes=3, img_size=32, kwargs=SMALL))
    assert not any(getattr(m, "fused_attn", False) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with capture_attention(model) as attn:
        logits = model(x)
    assert logits.shape == (2, 3)
    rows, cols = patch_grid(model)
    n_tokens = rows * cols + 1
    assert len(attn) == 2
    for a in attn:
        assert a.shape == (2, 2, n_tokens, n_tokens)
        assert a.requires_grad
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, n_tokens))
    with torch.no_grad():
        model(x)
    assert len(attn) == 2, "hooks must be removed when the context closes"


def test_timm_name_passes_through() -> None:
    model = build_model(
        ModelConfig(name="vit_tiny_patch16_224", num_classes=5, img_size=32, kwargs={"depth": 1})
    )
    assert patch_grid(model) == (2, 2)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert len(attention_modules(model)) == 1


def test_unknown_name_and_bad_kwargs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown model 'no_such_net'"):
        build_model(ModelConfig(name="no_such_net"))
    with pytest.raises(ValueError, match="rejected model.kwargs"):
        build_model(ModelConfig(kwargs={"no_such_arg": 1}))
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model(ModelConfig(pretrained=True))


def test_cnn_has_no_attention() -> None:
    cnn = build_model(ModelConfig(name="resnet10t", num_classes=2, img_size=32))
    with pytest.raises(ValueError, match="has no blocks"):
        attention_modules(cnn)


def test_unwrap_sees_through_wrappers() -> None:
    inner = build_model(ModelConfig(kwargs=SMALL))
    wrapper = torch.nn.Module()
    wrapper.module = inner
    assert unwrap(wrapper) is inner
    assert len(attention_modules(wrapper)) == 2
