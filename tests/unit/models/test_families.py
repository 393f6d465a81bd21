"""Every registered model family builds from a config, runs a batch, predicts and evaluates."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from unspur.config import ClipModelConfig, ModelConfig
from unspur.models.families import (
    FAMILIES,
    ModelFamily,
    TimmClassifier,
    family_of,
    get_family,
    register_family,
)

SIZE, N_CLASSES = 32, 3


def _timm_batches() -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, SIZE, SIZE)
    masks[:, 8:24, 8:24] = 1.0
    return [
        {
            "image": torch.randn(4, 3, SIZE, SIZE, generator=gen),
            "label": torch.tensor([0, 1, 2, 0]),
            "mask": masks,
            "has_mask": torch.ones(4, dtype=torch.bool),
            "image_id": [f"b{b}-{i}" for i in range(4)],
            "group": ["a", "b", "a", "b"],
        }
        for b in range(2)
    ]


CLIP = ClipModelConfig(img_size=SIZE, classes=["zero", "one", "two"])


def _clip_batches() -> list[dict[str, Any]]:
    tokens = get_family("clip").tokenizer(CLIP)(["a photo of a zero.", "a one", "a two", "zero"])
    return [
        {
            **batch,
            "tokens": tokens,
            "spurious_tokens": tokens.flip(0),
            "regions": batch["image"][:, None].flip(-1),
            "erased": batch["image"].flip(-2),
            "pasted": batch["image"].flip(-1).flip(-2),
            "pasted_tied": (torch.arange(len(batch["image"])) % 2) - 1,  # every other row: class 0
        }
        for batch in _timm_batches()
    ]


#: per family: a tiny config and the batches it runs on (a new family adds its entry here)
TINY: dict[str, tuple[Any, Callable[[], list[dict[str, Any]]]]] = {
    "clip": (CLIP, _clip_batches),
    "timm": (
        ModelConfig(
            num_classes=N_CLASSES, img_size=SIZE, kwargs={"depth": 1, "embed_dim": 32, "num_heads": 2}
        ),
        _timm_batches,
    ),
}


def test_every_family_has_a_tiny_config() -> None:
    assert set(TINY) == set(FAMILIES)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_builds_runs_predicts_and_evaluates(name: str) -> None:
    family = get_family(name)
    assert isinstance(family, ModelFamily) and family.name == name
    cfg, batches = TINY[name]
    torch.manual_seed(0)
    model, base = family.build(cfg), family.build(cfg)
    batch = batches()[0]
    out = family.forward(model, batch, family.outputs, base_model=base)
    assert set(out) == set(family.outputs)
    n_batch = len(batch["image_id"])  # per-image outputs, or scalars (a CLIP logit scale),
    per_class = {"class_text_features"}  # or one row per class (the zero-shot head)
    for key, v in out.items():
        rows = len(cfg.classes) if key in per_class else n_batch
        assert isinstance(v, torch.Tensor) and (v.ndim == 0 or v.shape[0] == rows), key
    assert set(family.forward(model, batch, frozenset({"logits"}))) == {"logits"}

    pred = family.predict(model, batches())
    n = sum(len(b["image_id"]) for b in batches())
    assert {"image_id", "label", "group", "pred", "probs"} <= set(pred)
    assert len(pred["pred"]) == n and list(pred["image_id"][:2]) == ["b0-0", "b0-1"]
    np.testing.assert_allclose(pred["probs"].sum(1), 1.0, rtol=1e-5)

    result = family.evaluate(model, batches())
    assert {"acc", "wga", "per_group", "n"} <= set(result) and result["n"] == n
    assert 0.0 <= result["wga"] <= result["acc"] + 1e-9 <= 1.0 + 1e-9
    if "relevance" in family.outputs:
        aligned = family.evaluate(model, batches(), relevance="rollout")
        assert 0.0 <= aligned["align_mass_in"] <= 1.0 and aligned["acc"] == result["acc"]


def test_family_lookup_and_registration() -> None:
    assert family_of(ModelConfig()) is FAMILIES["timm"]  # configs without model.family: timm
    assert family_of(CLIP) is FAMILIES["clip"]
    with pytest.raises(ValueError, match="unknown model family 'siglip'"):
        get_family("siglip")
    with pytest.raises(ValueError, match="already registered"):
        register_family(TimmClassifier())
    with pytest.raises(TypeError, match="ModelFamily"):
        register_family(object())  # type: ignore[arg-type]
