"""AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024) for timm vision transformers, written in unspur itself.

LRP is computed in its gradient form: the relevance of a tensor ``x`` is ``x * g``, where ``g`` is
pulled back from the target logit through every layer's *rule Jacobian* instead of its true one.
The rules, per operation (``g`` the incoming vector, ``x`` the operation's input):

- linear layers (qkv, proj, fc1, fc2, head), residual sums, token pooling, layer scale and the
  attention scale: LRP-epsilon with epsilon -> 0, which is the plain Jacobian (Gradient x Input
  is LRP-epsilon for a linear map; a bias keeps its own share);
- LayerNorm (every ``nn.LayerNorm``: norm1, norm2, the final norm, fc_norm, q/k and projection
  norms): the standard deviation is held constant (the LN rule of Ali et al. 2022 that AttnLRP
  adopts), so the layer is a linear centring and scaling: ``g_x = (g w - mean(g w)) / sigma``;
- element-wise activations (GELU): the identity rule ``R_in = R_out``: ``g_x = g f(x) / x``;
- the attention softmax: AttnLRP's rule ``R_in = x (R_out - s sum(R_out))``, which in gradient form
  is the softmax's own Jacobian ``s (g - sum(s g))``;
- the matmuls ``q @ k^T`` and ``A @ v``: LRP-epsilon over the sum and the uniform rule over each
  product (each factor takes half), i.e. each factor's plain Jacobian halved.

How: one forward of the model itself (through any DDP wrapper) with hooks that keep the
activations the rules read (each block's input, its qkv, attention probabilities, the MLP's
pre-activation, the final norm's and the pooling's inputs); then the rule backward above, written
out as ordinary tensor operations on those activations. Nothing is patched, and the result is an
ordinary function of the parameters: when grad is enabled, relevance stays in the graph and a loss
on it trains through it (the true derivative of the rule output, a double backward through the
forward), while the logits are the model's own, so a classification loss gets its true gradient.
Relevance is read at the tokens entering the first block (after the patch and position
embeddings): ``(tokens * g).sum(-1)`` -> (B, N). The softmax rule and the biases absorb relevance,
so the token relevances do not sum to the logit in general; with zero biases and no attention path
they do (tests/unit/test_attnlrp.py checks that, and a slow per-layer reference in explicit
relevance form).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Attention, LayerScale, Mlp
from timm.models.vision_transformer import Block
from torch import nn

from unspur.models.attention import unwrap

__all__ = ["STABILIZER", "token_relevance"]

#: epsilon of the identity rule's division f(x) / x (sign-preserving)
STABILIZER = 1e-9
_FIX = "use relevance: rollout"


def _stabilize(x: torch.Tensor) -> torch.Tensor:
    return x + STABILIZER * torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _norm_vjp(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """LN rule: the LayerNorm's Jacobian with sigma held constant, applied to ``g``."""
    if isinstance(module, nn.Identity):
        return g
    if not isinstance(module, nn.LayerNorm):
        raise ValueError(f"AttnLRP has a rule for nn.LayerNorm only, not {type(module).__name__}; {_FIX}")
    if module.weight is not None:
        g = g * module.weight
    sigma = torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + module.eps)
    return (g - g.mean(-1, keepdim=True)) / sigma


def _scale_vjp(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Identity):
        return g
    if isinstance(module, LayerScale):
        return g * module.gamma
    raise ValueError(f"AttnLRP has no rule for {type(module).__name__} as layer scale; {_FIX}")


def _attention_vjp(attn: Attention, x: torch.Tensor, acts: dict[str, torch.Tensor], g: torch.Tensor):
    """Rule backward of the attention branch: ``g`` at its output -> ``g`` at its input (norm1's
    output)."""
    batch, n, _ = x.shape
    heads, dim = attn.num_heads, attn.head_dim
    q, k, v = acts["qkv"].reshape(batch, n, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
    qn, kn = attn.q_norm(q), attn.k_norm(k)
    probs = acts["probs"]
    g_out = g @ attn.proj.weight
    if not isinstance(attn.norm, nn.Identity):
        g_out = _norm_vjp(attn.norm, (probs @ v).transpose(1, 2).reshape(batch, n, -1), g_out)
    g_out = g_out.reshape(batch, n, heads, dim).transpose(1, 2)
    g_probs = 0.5 * (g_out @ v.transpose(-2, -1))  # uniform rule, A @ v
    g_v = 0.5 * (probs.transpose(-2, -1) @ g_out)
    g_scores = probs * (g_probs - (probs * g_probs).sum(-1, keepdim=True))  # softmax rule
    g_q = 0.5 * (g_scores @ kn) * attn.scale  # uniform rule, (q * scale) @ k^T
    g_k = 0.5 * (g_scores.transpose(-2, -1) @ (qn * attn.scale))
    g_q, g_k = _norm_vjp(attn.q_norm, q, g_q), _norm_vjp(attn.k_norm, k, g_k)
    g_qkv = torch.stack([g_q, g_k, g_v]).permute(1, 3, 0, 2, 4).reshape(batch, n, -1)
    return g_qkv @ attn.qkv.weight


def _mlp_vjp(mlp: Mlp, pre: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Rule backward of the MLP: ``g`` at fc2's output -> ``g`` at fc1's input."""
    g = g @ mlp.fc2.weight
    post = mlp.act(pre)
    if not isinstance(mlp.norm, nn.Identity):
        g = _norm_vjp(mlp.norm, post, g)
    return (g * post / _stabilize(pre)) @ mlp.fc1.weight  # identity rule through the activation


def _block_vjp(block: Block, acts: dict[str, torch.Tensor], g: torch.Tensor) -> torch.Tensor:
    """``g`` at the block's output -> ``g`` at its input."""
    g_mid = g + _norm_vjp(
        block.norm2, acts["mid"], _mlp_vjp(block.mlp, acts["pre"], _scale_vjp(block.ls2, g))
    )
    branch = _attention_vjp(block.attn, acts["x"], acts, _scale_vjp(block.ls1, g_mid))
    return g_mid + _norm_vjp(block.norm1, acts["x"], branch)


def _inactive(module: nn.Module) -> bool:
    """A dropout / drop-path that is the identity in this forward."""
    rate = getattr(module, "p", getattr(module, "drop_prob", 0.0))
    return isinstance(module, nn.Identity) or not module.training or float(rate) == 0.0


def _check(model: nn.Module) -> None:
    if (
        not hasattr(model, "blocks")
        or not hasattr(model, "patch_embed")
        or not isinstance(model.head, nn.Linear)
    ):
        raise ValueError(
            f"AttnLRP needs a timm vision transformer with a linear head, got {type(model).__name__}"
        )
    pool = model.global_pool
    if (
        getattr(model, "attn_pool", None) is not None
        or pool not in ("token", "avg")
        or model.pool_include_prefix
    ):
        raise ValueError(
            f"AttnLRP supports token or avg pooling (without prefix tokens), not {pool!r}; {_FIX}"
        )
    for block in model.blocks:
        if type(block) is not Block or type(block.attn) is not Attention or type(block.mlp) is not Mlp:
            raise ValueError(
                f"AttnLRP has rules for timm's Block(Attention, Mlp) only, not {type(block).__name__}("
                f"{type(getattr(block, 'attn', None)).__name__}, {type(getattr(block, 'mlp', None)).__name__}); {_FIX}"
            )
        if getattr(block.attn, "gate", None) is not None:
            raise ValueError(f"AttnLRP has no rule for gated attention; {_FIX}")
        drops = (block.drop_path1, block.drop_path2, block.attn.attn_drop, block.attn.proj_drop)
        if not all(_inactive(m) for m in (*drops, block.mlp.drop1, block.mlp.drop2, model.head_drop)):
            raise ValueError("AttnLRP reads the forward's activations: train with dropout and drop path off")


@contextmanager
def _capture(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Hooks keeping what the rule backward reads: per block its input ``x``, ``qkv``, the attention
    ``probs``, the MLP's input ``mid`` (norm2's input) and pre-activation ``pre``; the final norm's
    input ``last`` and the pooled features ``pooled`` (fc_norm's input)."""
    acts: dict[str, Any] = {"blocks": [{} for _ in model.blocks]}
    handles = []

    def keep(store: dict, key: str, output: bool = False):
        if output:
            return lambda _m, _i, out: store.__setitem__(key, out)
        return lambda _m, inputs: store.__setitem__(key, inputs[0])

    for block, store in zip(model.blocks, acts["blocks"], strict=True):
        handles += [
            block.norm1.register_forward_pre_hook(keep(store, "x")),
            block.attn.qkv.register_forward_hook(keep(store, "qkv", output=True)),
            block.attn.attn_drop.register_forward_pre_hook(keep(store, "probs")),
            block.norm2.register_forward_pre_hook(keep(store, "mid")),
            block.mlp.act.register_forward_pre_hook(keep(store, "pre")),
        ]
    handles += [
        model.norm.register_forward_pre_hook(keep(acts, "last")),
        model.fc_norm.register_forward_pre_hook(keep(acts, "pooled")),
    ]
    try:
        yield acts
    finally:
        for handle in handles:
            handle.remove()


def token_relevance(
    model: nn.Module, images: torch.Tensor, target: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """AttnLRP relevance of the target logit. images (B, 3, H, W) -> (logits (B, K), R (B, N)).

    R: per token (prefix tokens first) at the input of the first block, signed. ``target``: (B,)
    class indices, default the model's own argmax. The logits are the model's own forward; R is
    differentiable w.r.t. the parameters when grad is enabled (nothing is computed twice).
    """
    bare = unwrap(model)
    _check(bare)
    with _capture(bare) as acts:
        logits = model(images)
    if target is None:
        target = logits.detach().argmax(dim=1)
    if target.shape != (logits.shape[0],):
        raise ValueError(f"target must have shape ({logits.shape[0]},), got {tuple(target.shape)}")
    g = F.one_hot(target.long(), logits.shape[1]).to(logits.dtype) @ bare.head.weight
    g = _norm_vjp(bare.fc_norm, acts["pooled"], g)
    last = acts["last"]
    if bare.global_pool == "token":
        g_last = F.pad(g[:, None], (0, 0, 0, last.shape[1] - 1))
    else:  # the mean over the tokens after the prefix
        prefix = bare.num_prefix_tokens
        g_last = F.pad(
            g[:, None].expand(-1, last.shape[1] - prefix, -1) / (last.shape[1] - prefix), (0, 0, prefix, 0)
        )
    g = _norm_vjp(bare.norm, last, g_last)
    for block, block_acts in zip(reversed(bare.blocks), reversed(acts["blocks"]), strict=True):
        g = _block_vjp(block, block_acts, g)
    return logits, (acts["blocks"][0]["x"] * g).sum(-1)
