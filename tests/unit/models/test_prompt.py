"""The learnable prompt context: the embedding-input text forward equals open_clip's token-id
forward, the untuned prompt is the template "a photo of a {class}.", and the context size check."""

from __future__ import annotations

import open_clip
import pytest
import torch

from unspur.models.prompt import PromptContext, context_token_ids, encode_text_embeddings, eot_positions

CLASSES = ["bird", "airplane", "bicycle", "tree"]


def test_embedding_forward_equals_token_forward(tiny_clip) -> None:
    model, tokenizer = tiny_clip
    tokens = tokenizer(["a photo of a bird.", "a blurry picture of a small tree in the snow."])
    with torch.no_grad():
        expected = open_clip.model.CLIP.encode_text(model, tokens)  # the full-context forward
        full = encode_text_embeddings(model, model.token_embedding(tokens), eot_positions(model, tokens))
        cut = int(eot_positions(model, tokens).max()) + 1  # causal mask: positions after EOT are unused
        short = encode_text_embeddings(
            model, model.token_embedding(tokens[:, :cut]), eot_positions(model, tokens)
        )
    assert torch.equal(full, expected)
    torch.testing.assert_close(short, expected, rtol=1e-5, atol=1e-5)


def test_untuned_prompt_is_the_template_and_contexts_are_independent(tiny_clip) -> None:
    model, tokenizer = tiny_clip
    assert len(context_token_ids(tokenizer, "a photo of a")) == 4
    prompt = PromptContext(model, tokenizer, CLASSES, n_prompts=3)
    assert prompt.n_ctx == 4 and prompt.ctx.shape[:2] == (3, 4) and prompt.tokens.shape[1] == 32
    with torch.no_grad():
        template = model.encode_text(tokenizer([f"a photo of a {c}." for c in CLASSES]), normalize=True)
        features = prompt.features()
    assert features.shape == (3, 4, template.shape[-1])
    for p in range(3):
        torch.testing.assert_close(features[p], template, rtol=1e-5, atol=1e-5)
    prompt.features()[1].sum().backward()  # only context 1 gets a gradient
    grad = prompt.ctx.grad
    assert grad[1].abs().sum() > 0 and grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    fresh = prompt.reset(2)
    assert fresh.shape[0] == 2 and torch.equal(fresh[0], prompt.start)


def test_context_size_must_match_its_init(tiny_clip) -> None:
    model, tokenizer = tiny_clip
    with pytest.raises(ValueError, match="is 4 tokens"):
        PromptContext(model, tokenizer, CLASSES, n_ctx=3)
    three = PromptContext(model, tokenizer, CLASSES, context_init="a photo of")
    assert three.n_ctx == 3
    gen = torch.Generator().manual_seed(0)
    noise = PromptContext(model, tokenizer, CLASSES, context_init=None, n_ctx=3, generator=gen)
    again = PromptContext(
        model, tokenizer, CLASSES, context_init=None, n_ctx=3, generator=torch.Generator().manual_seed(0)
    )
    assert noise.ctx.shape == (1, 3, 128) and torch.equal(noise.start, again.start)
    assert 0.01 < float(noise.start.std()) < 0.03
