"""Learnable prompt context for a frozen open_clip model (SEraser, METHODS.md 4).

A class prompt is ``[SOT] ctx_1 .. ctx_n {class}. [EOT]``: ``n`` context-token embeddings
shared by every class, then the class name's own tokens. The context starts as the token
embeddings of ``context_init`` (``"a photo of a"``: 4 tokens in open_clip's tokenizer, so the
untuned prompt is the template ``"a photo of a {class}."``), or as N(0, 0.02) noise without one.

:class:`PromptContext` holds ``P`` independent contexts (one per image episode) as one
``(P, n, W)`` parameter, so P episodes share one text forward of ``P * C`` sequences and each
context receives only its own episode's gradient. :func:`encode_text_embeddings` is open_clip's
``encode_text`` from token embeddings instead of token ids. With a causal text mask (open_clip's
CLIP text tower) the sequences are cut after the last class prompt's EOT token: a position only
attends to earlier ones, so the pooled EOT features do not change, and a step costs a fraction
of the 77-token forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PromptContext",
    "context_token_ids",
    "encode_text_embeddings",
    "eot_positions",
    "pools_at_eot",
]

#: captions -> (N, context_length) int64 token ids (open_clip's tokenizer)
Tokenizer = Callable[[Sequence[str]], torch.Tensor]


def pools_at_eot(model: nn.Module) -> bool:
    """Whether open_clip pools ``model``'s text features at the EOT token (``argmax``/``eos``)."""
    return getattr(model, "text_pool_type", "argmax") in ("argmax", "eos")


def _text_tower(model: nn.Module) -> nn.Module:
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise ValueError(
            f"prompt tuning needs open_clip's built-in text tower (CLIP); {type(model).__name__} lacks "
            f"{missing} (a Hugging Face text tower is not supported)"
        )
    if not pools_at_eot(model):
        raise ValueError(f"prompt tuning pools at the EOT token; text_pool_type {model.text_pool_type!r}")
    return model


def eot_positions(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """(N, L) token ids -> (N,) index of each row's EOT token, as open_clip pools it."""
    eos = getattr(model, "text_eos_id", None)
    if getattr(model, "text_pool_type", "argmax") == "eos" and eos is not None:
        return (tokens == eos).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def encode_text_embeddings(model: nn.Module, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """open_clip ``encode_text`` from embeddings: (N, L', W) token embeddings (L' <= the context
    length; positions ``0..L'-1``) and (N,) EOT positions -> (N, D) unnormalised text features.

    Given ``model.token_embedding(tokens)`` and :func:`eot_positions` of ``tokens`` it computes what
    ``model.encode_text(tokens)`` does.
    """
    bare = _text_tower(model)
    length = embeddings.shape[1]
    cast = bare.transformer.get_cast_dtype()
    x = embeddings.to(cast) + bare.positional_embedding[:length].to(cast)
    mask = bare.attn_mask
    x = bare.transformer(x, attn_mask=None if mask is None else mask[:length, :length])
    x = bare.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    projection = bare.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


def context_token_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The token ids of ``text`` between SOT and EOT (``"a photo of a"`` -> 4 ids)."""
    row = tokenizer([text])[0]
    end = int(row.argmax())
    return [int(t) for t in row[1:end]]


class PromptContext:
    """``P`` learnable contexts over the class prompts of ``classes`` on a frozen ``model``.

    ``ctx`` (P, n, W) is the only tensor with a gradient; :meth:`features` gives (P, C, D)
    L2-normalised class text features; :meth:`reset` makes a fresh ``ctx`` with every context at
    its start (an episode starts from there). ``n_ctx`` None = the token count of ``context_init``; with a
    ``context_init`` it must equal that count. ``generator`` draws the random start when
    ``context_init`` is None. The sequences are cut after the last EOT when the text mask is causal.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        classes: Sequence[str],
        *,
        n_prompts: int = 1,
        context_init: str | None = "a photo of a",
        n_ctx: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        bare = _text_tower(model)
        if not classes:
            raise ValueError("prompt tuning needs the model's zero-shot classes (model.classes)")
        if context_init is not None:
            init_ids = context_token_ids(tokenizer, context_init)
            if n_ctx is not None and n_ctx != len(init_ids):
                raise ValueError(
                    f"context_init {context_init!r} is {len(init_ids)} tokens in open_clip's tokenizer, "
                    f"not n_ctx={n_ctx}: set n_ctx to {len(init_ids)} (or null), or pick a context_init "
                    f"of {n_ctx} tokens"
                )
            n_ctx = len(init_ids)
            head = context_init
        else:
            if n_ctx is None or n_ctx < 1:
                raise ValueError("without context_init, n_ctx must be >= 1")
            init_ids = []
            head = " ".join(["X"] * n_ctx)
        tokens = tokenizer([f"{head} {name}." for name in classes]).to(bare.positional_embedding.device)
        if init_ids and tokens[:, 1 : 1 + n_ctx].tolist() != [init_ids] * len(classes):
            raise ValueError(
                f"context_init {context_init!r} does not tokenize to the same ids before a class"
            )
        eot = eot_positions(bare, tokens)
        length = int(eot.max()) + 1 if bare.attn_mask is not None else tokens.shape[1]
        with torch.no_grad():
            embedded = bare.token_embedding(tokens[:, :length]).detach()
        width = embedded.shape[-1]
        if context_init is not None:
            start = embedded[0, 1 : 1 + n_ctx].clone()
        else:
            start = torch.empty(n_ctx, width).normal_(0.0, 0.02, generator=generator).to(embedded)
        self.model = bare
        self.classes = tuple(classes)
        self.n_ctx = n_ctx
        self.tokens = tokens
        self.eot = eot
        self.prefix = embedded[:, :1]  # (C, 1, W): SOT
        self.suffix = embedded[:, 1 + n_ctx :]  # (C, L' - 1 - n, W): class tokens, '.', EOT, padding
        self.start = start
        self.ctx = nn.Parameter(start.expand(n_prompts, -1, -1).clone())

    @property
    def n_prompts(self) -> int:
        return self.ctx.shape[0]

    def reset(self, n_prompts: int | None = None) -> nn.Parameter:
        """A fresh ``ctx`` of ``n_prompts`` contexts (default: as many as now), each at its start;
        returns it (for a new optimizer)."""
        n = self.n_prompts if n_prompts is None else n_prompts
        self.ctx = nn.Parameter(self.start.expand(n, -1, -1).clone())
        return self.ctx

    def embeddings(self) -> torch.Tensor:
        """(P * C, L', W) prompt embeddings, prompt-major."""
        p, c = self.n_prompts, len(self.classes)
        ctx = self.ctx[:, None].expand(p, c, -1, -1)
        prefix = self.prefix[None].expand(p, -1, -1, -1)
        suffix = self.suffix[None].expand(p, -1, -1, -1)
        return torch.cat([prefix, ctx, suffix], dim=2).flatten(0, 1)

    def features(self) -> torch.Tensor:
        """(P, C, D) L2-normalised text features of every class prompt of every context."""
        p = self.n_prompts
        out = encode_text_embeddings(self.model, self.embeddings(), self.eot.repeat(p))
        return F.normalize(out, dim=-1).view(p, len(self.classes), -1)
