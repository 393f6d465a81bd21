"""AttnLRP: each rule against its definition, conservation, a slow per-layer reference in explicit
relevance form (values and the gradients a CFT loss takes through them), true logits for training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import nn

from unspur import attnlrp
from unspur.attnlrp import _mlp_vjp, _norm_vjp, token_relevance
from unspur.config import LossConfig, ModelConfig, TrainConfig
from unspur.losses import get_loss
from unspur.models import build_model
from unspur.relevance import minmax, relevance_map, upsample
from unspur.training import make_optimizer, train_one_epoch

SMALL = {"depth": 2, "embed_dim": 24, "num_heads": 2}
VARIANTS = {"cls": {}, "gap": {"class_token": False, "global_pool": "avg"}, "registers": {"reg_tokens": 2}}
EPS = 1e-30  # guards exact zeros only: the reference divides exactly


def _model(variant: str = "cls") -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="vit_tiny_synth", num_classes=3, img_size=32, kwargs={**SMALL, **VARIANTS[variant]}
    )
    return build_model(cfg).double().eval()


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# --- the rules, one by one -------------------------------------------------------------------


def test_layer_norm_rule_is_linear_with_sigma_held_and_conserves() -> None:
    ln = nn.LayerNorm(9).double()
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_()
    x = torch.randn(5, 9, dtype=torch.float64) * 3 + 1
    g = torch.randn(5, 9, dtype=torch.float64)
    r_in = x * _norm_vjp(ln, x, g)
    torch.testing.assert_close(r_in.sum(-1), ((ln(x) - ln.bias) * g).sum(-1))  # the bias keeps its share
    sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    centring = torch.eye(9, dtype=x.dtype) - 1.0 / 9
    torch.testing.assert_close(r_in, x * (((g * ln.weight) @ centring) / sigma))


def test_mlp_rules_pass_relevance_through_the_activation_unchanged() -> None:
    """Identity rule through GELU + epsilon rule through the linears: with zero biases the MLP
    conserves relevance; with fc1 the identity, the relevance at the activation's input (x * g_x)
    equals that at its output (gelu(x) * g)."""
    torch.manual_seed(2)
    mlp = Mlp(6, 6).double()
    with torch.no_grad():
        mlp.fc1.bias.zero_()
        mlp.fc2.bias.zero_()
    x = torch.randn(4, 6, dtype=torch.float64)
    g = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close((x * _mlp_vjp(mlp, mlp.fc1(x), g)).sum(), (mlp(x) * g).sum())
    with torch.no_grad():
        mlp.fc1.weight.copy_(torch.eye(6))
    torch.testing.assert_close(x * _mlp_vjp(mlp, x, g), F.gelu(x) * (g @ mlp.fc2.weight))


def test_the_rule_output_is_differentiable_like_finite_differences() -> None:
    """The double backward a CFT loss takes: d(sum of token relevance)/d(weight) against central
    finite differences, for weights before and after the attention softmax and the GELU."""
    model = _model()
    images = _images()
    for weight in (
        model.blocks[0].attn.qkv.weight,
        model.blocks[-1].mlp.fc1.weight,
        model.blocks[0].attn.proj.weight,
    ):
        (grad,) = torch.autograd.grad(token_relevance(model, images)[1].sum(), weight)
        step, index = 1e-6, (3, 5)
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                weight[index] += sign * step
                values.append(token_relevance(model, images)[1].sum().item())
                weight[index] -= sign * step
        assert grad[index].item() == pytest.approx((values[0] - values[1]) / (2 * step), rel=1e-5, abs=1e-10)


# --- the whole model ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_are_the_models_own(variant: str) -> None:
    model = _model(variant)
    images = _images()
    torch.testing.assert_close(token_relevance(model, images)[0], model(images), rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["cls", "gap"])
def test_relevance_sums_to_the_logit_without_biases_and_attention(variant: str) -> None:
    """Conservation: with zero biases and no attention path (zero qkv, so the softmax rule is not
    used) the LN, identity and epsilon rules conserve: the token relevances sum to the logit."""
    model = _model(variant)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".qkv." in name:
                param.zero_()
    model.requires_grad_(False)
    logits, relevance = token_relevance(model, _images(3))
    torch.testing.assert_close(relevance.sum(1), logits.max(1).values, rtol=1e-7, atol=1e-9)


def _div(r: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return r / (z + EPS * torch.where(z >= 0, 1.0, -1.0).to(z.dtype))


def _linear_ref(layer: nn.Linear, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """LRP-epsilon: R_i = sum_j x_i w_ji R_j / z_j."""
    return x * (_div(r_out, F.linear(x, layer.weight, layer.bias)) @ layer.weight)


def _ln_ref(ln: nn.Module, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """LN rule: y = w * (C x) / sigma + b with sigma constant; epsilon rule through both."""
    if isinstance(ln, nn.Identity):
        return r_out
    sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    h = (x - x.mean(-1, keepdim=True)) / sigma
    r_h = h * ln.weight * _div(r_out, h * ln.weight + ln.bias)
    ratio = _div(r_h, h)
    return x * (ratio - ratio.mean(-1, keepdim=True)) / sigma


def _ln(ln: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x if isinstance(ln, nn.Identity) else F.layer_norm(x, x.shape[-1:], ln.weight, ln.bias, ln.eps)


def _block_ref(block: nn.Module, x: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
    """One block in explicit relevance form: plain forward, then every rule written out."""
    attn, mlp = block.attn, block.mlp
    b, n, c = x.shape
    heads, d = attn.num_heads, attn.head_dim
    n1 = _ln(block.norm1, x)
    qkv = F.linear(n1, attn.qkv.weight, attn.qkv.bias)
    q, k, v = qkv.reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    qs = q * attn.scale
    scores = qs @ k.transpose(-2, -1)
    probs = scores.softmax(-1)
    o = probs @ v
    o_cat = o.transpose(1, 2).reshape(b, n, c)
    p = F.linear(o_cat, attn.proj.weight, attn.proj.bias)
    x1 = x + p
    n2 = _ln(block.norm2, x1)
    f1 = F.linear(n2, mlp.fc1.weight, mlp.fc1.bias)
    a1 = F.gelu(f1)
    f2 = F.linear(a1, mlp.fc2.weight, mlp.fc2.bias)
    x2 = x1 + f2
    r_x1 = x1 * _div(r_out, x2)  # residual sum: epsilon rule
    r_f2 = f2 * _div(r_out, x2)
    r_f1 = _linear_ref(mlp.fc2, a1, r_f2)  # identity rule through GELU: R_f1 = R_a1
    r_x1 = r_x1 + _ln_ref(block.norm2, x1, _linear_ref(mlp.fc1, n2, r_f1))
    r_x = x * _div(r_x1, x1)
    r_p = p * _div(r_x1, x1)
    ratio = _div(_linear_ref(attn.proj, o_cat, r_p).reshape(b, n, heads, d).transpose(1, 2), o)
    r_probs = 0.5 * probs * (ratio @ v.transpose(-2, -1))  # uniform rule, A @ v
    r_v = 0.5 * v * (probs.transpose(-2, -1) @ ratio)
    r_scores = scores * (r_probs - probs * r_probs.sum(-1, keepdim=True))  # softmax rule
    ratio_s = _div(r_scores, scores)
    r_q = 0.5 * qs * (ratio_s @ k)  # uniform rule, q @ k^T (the scale passes relevance unchanged)
    r_k = 0.5 * k * (ratio_s.transpose(-2, -1) @ qs)
    r_qkv = torch.stack([r_q, r_k, r_v]).permute(1, 3, 0, 2, 4).reshape(b, n, 3 * c)
    return r_x + _ln_ref(block.norm1, x, _linear_ref(attn.qkv, n1, r_qkv))


def _slow_attnlrp(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token relevance (B, N) and Phi (B, H, W), layer by layer in explicit relevance form."""
    inputs = [model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(images))))]
    for block in model.blocks:
        inputs.append(block(inputs[-1]))
    last = _ln(model.norm, inputs[-1])
    prefix = model.num_prefix_tokens
    pooled = last[:, 0] if model.global_pool == "token" else last[:, prefix:].mean(1)
    features = _ln(model.fc_norm, pooled)
    logits = F.linear(features, model.head.weight, model.head.bias)
    r_logits = F.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype) * logits
    r_pooled = _ln_ref(model.fc_norm, pooled, _linear_ref(model.head, features, r_logits))
    r_last = torch.zeros_like(last)
    if model.global_pool == "token":
        r_last[:, 0] = r_pooled
    else:  # mean over the patch tokens: epsilon rule
        r_last[:, prefix:] = last[:, prefix:] / (last.shape[1] - prefix) * _div(r_pooled, pooled)[:, None]
    r = _ln_ref(model.norm, inputs[-1], r_last)
    for block, x in zip(reversed(model.blocks), reversed(inputs[:-1]), strict=True):
        r = _block_ref(block, x, r)
    tokens = r.sum(-1)
    side = int((tokens.shape[1] - prefix) ** 0.5)
    phi = minmax(upsample(tokens[:, prefix:].reshape(-1, side, side), tuple(images.shape[-2:])))
    return tokens, phi


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matches_the_slow_per_layer_reference_values_and_gradients(variant: str, monkeypatch) -> None:
    monkeypatch.setattr(attnlrp, "STABILIZER", 1e-15)  # the reference's identity rule divides by nothing
    model = _model(variant)
    images = _images()
    _, fast_tokens = token_relevance(model, images)
    slow_tokens, slow_phi = _slow_attnlrp(model, images)
    torch.testing.assert_close(fast_tokens, slow_tokens, rtol=1e-6, atol=1e-10)
    _, phi = relevance_map(model, images, method="attnlrp")
    torch.testing.assert_close(phi, slow_phi, rtol=1e-6, atol=1e-8)
    # what a CFT loss trains through: the gradient of a loss on the relevance w.r.t. the weights (a
    # double backward; taken before the min-max, whose argmin/argmax may tie between the two)
    weights = [
        model.blocks[0].attn.qkv.weight,
        model.blocks[-1].mlp.fc1.weight,
        model.blocks[-1].norm2.weight,
    ]
    ramp = torch.linspace(-1, 1, fast_tokens.shape[1], dtype=fast_tokens.dtype)
    fast = torch.autograd.grad((fast_tokens * ramp).sum(), weights)
    slow = torch.autograd.grad((slow_tokens * ramp).sum(), weights)
    for f, s in zip(fast, slow, strict=True):
        torch.testing.assert_close(f, s, rtol=1e-6, atol=1e-10)
        assert f.abs().sum() > 0


def test_the_sign_variants_map_magnitude_and_positive_part() -> None:
    """``attnlrp_abs`` / ``attnlrp_pos`` min-max |R| / max(R, 0) of the same patch relevances."""
    model = _model()
    images = _images()
    _, tokens = token_relevance(model, images)
    patches = tokens[:, 1:].reshape(-1, 4, 4)
    assert (patches < 0).any() and (patches > 0).any()  # signed, so the three maps differ
    phis = {}
    for method, expected in (
        ("attnlrp", patches),
        ("attnlrp_abs", patches.abs()),
        ("attnlrp_pos", patches.clamp(min=0)),
    ):
        _, phis[method] = relevance_map(model, images, method=method)
        torch.testing.assert_close(phis[method], minmax(upsample(expected, (32, 32))))
    assert not torch.allclose(phis["attnlrp"], phis["attnlrp_abs"])


def test_training_logits_carry_the_true_gradient() -> None:
    """The classification term must not be trained through the rule-modified backward."""
    model = _model()
    images = _images()
    logits, _ = relevance_map(model, images, method="attnlrp")
    params = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([0, 1])), params)
    plain = torch.autograd.grad(F.cross_entropy(model(images), torch.tensor([0, 1])), params)
    for a, b in zip(ours, plain, strict=True):
        torch.testing.assert_close(a, b)


def test_a_cft_step_on_attnlrp_trains() -> None:
    model = _model().float().train()
    batch = {
        "image": torch.randn(4, 3, 32, 32),
        "label": torch.tensor([0, 1, 2, 0]),
        "mask": (torch.rand(4, 32, 32) > 0.5).float(),
        "has_mask": torch.ones(4, dtype=torch.bool),
        "image_id": [f"i{i}" for i in range(4)],
    }
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    optimizer = make_optimizer(model, TrainConfig(lr=1e-3))
    terms = train_one_epoch(
        model, [batch], get_loss("cft"), LossConfig(name="cft"), optimizer, relevance="attnlrp"
    )
    assert torch.isfinite(torch.tensor(terms["loss"])) and terms["align"] > 0
    assert not torch.equal(before, model.blocks[0].attn.qkv.weight)


def test_unsupported_architectures_name_the_fix() -> None:
    model = _model()
    model.blocks[0].mlp = nn.Sequential(nn.Linear(24, 24))
    with pytest.raises(ValueError, match="relevance: rollout"):
        token_relevance(model, _images())
