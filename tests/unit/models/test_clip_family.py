"""The clip family: config section, zero-shot head, tokenizer offline, checkpoints, evaluation,
caption tokens in the dataset and a real-size (ViT-B-32, random init) forward."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from unspur.actors.classifier import ClassifierPredictor
from unspur.config import ClipModelConfig, ConfigError, FinetuneConfig, ModelConfig, SpuriousWorldConfig
from unspur.config.model import validate_model_config
from unspur.data.spuriousworld import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset
from unspur.models import checkpoint_model_config, load_checkpoint, save_checkpoint
from unspur.models.checkpoint import CheckpointError, load_weights
from unspur.models.families import FAMILIES, get_family, zero_shot_head

CLASSES = ["bird", "airplane", "bicycle", "tree"]
CFG = ClipModelConfig(classes=CLASSES, img_size=32, templates=["a photo of a {}.", "a drawing of a {}."])
FAMILY = get_family("clip")
#: the outputs of the trained model alone (no spurious captions, no teacher)
PLAIN = frozenset({"image_features", "text_features", "logit_scale", "logits"})


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILY.build(CFG).eval()


@pytest.fixture(scope="module")
def world() -> tuple:
    return generate_tables(
        SpuriousWorldConfig(image_size=32, n_train=4, n_val=1, n_test=8), splits=("train", "test")
    )


def test_model_section_picks_the_family_config() -> None:
    assert type(FinetuneConfig.model_validate({"model": {"name": "vit_tiny_synth"}}).model) is ModelConfig
    assert type(FinetuneConfig().model) is ModelConfig
    cfg = FinetuneConfig.model_validate(
        {"model": {"family": "clip", "name": "ViT-B-32", "pretrained": "openai", "img_size": 224}}
    )
    assert isinstance(cfg.model, ClipModelConfig) and cfg.model.pretrained == "openai"
    assert FinetuneConfig.model_validate(cfg.model_dump()).model == cfg.model  # dump round trip
    with pytest.raises(ValueError, match="unknown model family 'nope'"):
        FinetuneConfig.model_validate({"model": {"family": "nope"}})
    with pytest.raises(ValueError, match="num_classes"):  # timm fields are not clip's
        FinetuneConfig.model_validate({"model": {"family": "clip", "num_classes": 4}})
    with pytest.raises(ConfigError, match="one '\\{\\}'"):
        validate_model_config({"family": "clip", "templates": ["no placeholder"]})
    assert FAMILIES.entry("clip").config is ClipModelConfig and FAMILIES.entry("timm").config is ModelConfig


def test_zero_shot_head_is_the_renormalised_mean_of_template_embeddings(model) -> None:
    tokenizer = FAMILY.tokenizer(CFG)
    with torch.no_grad():
        head = zero_shot_head(model, tokenizer, CLASSES, CFG.templates)
        rows = []
        for c in CLASSES:
            emb = F.normalize(model.encode_text(tokenizer([t.format(c) for t in CFG.templates])), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=0))
    assert head.shape == (len(CLASSES), 64)
    torch.testing.assert_close(head, torch.stack(rows), rtol=1e-5, atol=1e-6)


def test_forward_outputs_names_and_shapes(model) -> None:
    tokenizer = FAMILY.tokenizer(CFG)
    batch = {"image": torch.randn(3, 3, 32, 32), "tokens": tokenizer(["a photo of a bird.", "x", "y"])}
    with torch.no_grad():
        out = FAMILY.forward(model, batch, PLAIN)
        head = zero_shot_head(model, tokenizer, CLASSES, CFG.templates)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "image_features": (3, 64),
        "text_features": (3, 64),
        "logit_scale": (),
        "logits": (3, len(CLASSES)),
    }
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(out["logit_scale"], model.logit_scale.exp())
    expected = out["logit_scale"] * out["image_features"] @ head.T
    torch.testing.assert_close(out["logits"], expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="tokens"):
        FAMILY.forward(model, {"image": batch["image"]}, frozenset({"text_features"}))


def test_tokenizer_works_offline() -> None:
    code = (
        "from unspur.config import ClipModelConfig; from unspur.models.families import get_family; "
        "t = get_family('clip').tokenizer(ClipModelConfig()); x = t(['a photo of a bird.']); "
        "assert x.shape == (1, 32) and x.dtype.is_floating_point is False and int(x[0, 0]) == 49406"
    )
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    subprocess.run([sys.executable, "-c", code], check=True, env={**_base_env(), **env}, timeout=120)


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_checkpoint_round_trip(model, tmp_path: Path) -> None:
    save_checkpoint(
        tmp_path, model, FinetuneConfig(model=CFG, data={"spuriousworld": {}}, loss={"name": "erm"})
    )
    saved = checkpoint_model_config(tmp_path)
    assert isinstance(saved, ClipModelConfig) and saved.classes == CLASSES and saved.pretrained is None
    loaded, config = load_checkpoint(tmp_path)
    assert config["model"]["family"] == "clip"
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    timm_model = get_family("timm").build(ModelConfig(img_size=32, kwargs={"depth": 1}))
    with pytest.raises(CheckpointError, match="holds unspur-tiny-clip \\(family=clip"):
        load_weights(timm_model, tmp_path, ModelConfig(img_size=32, kwargs={"depth": 1}))


def test_predictor_evaluates_a_clip_checkpoint(model, world, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, model, CFG)
    images = world[0][world[0].split == "test"]
    predictor = ClassifierPredictor(str(tmp_path), relevance="rollout", device="cpu")
    out = predictor({k: images[k].to_numpy() for k in ("image_id", "image", "label", "group")})
    assert len(out["pred"]) == len(images) and set(out["pred"]) <= set(range(len(CLASSES)))
    assert np.isnan(out["align_mass_in"]).all() and not any(out["error"])
    from unspur.metrics import summarize

    metrics = summarize(out["pred"], out["label"], out["group"])
    assert {"acc", "wga", "per_group", "n"} <= set(metrics) and metrics["n"] == len(images)


def test_dataset_yields_caption_tokens(world) -> None:
    images = world[0]
    tokenizer = FAMILY.tokenizer(CFG)
    ds = ImageMaskDataset(images, img_size=32, fields=("image", "label", "tokens"), tokenizer=tokenizer)
    item = ds[0]
    assert set(item) == {"image", "label", "tokens", "image_id", "view_id", "group"}
    torch.testing.assert_close(item["tokens"], tokenizer([images.caption[0]])[0])
    assert "tokens" not in ImageMaskDataset(images, img_size=32)[0]  # default unchanged
    with pytest.raises(ValueError, match="tokenizer"):
        ImageMaskDataset(images, img_size=32, fields=("image", "tokens"))
    with pytest.raises(ValueError, match="caption"):
        ImageMaskDataset(images.drop(columns="caption"), fields=("tokens",), tokenizer=tokenizer)


def test_vit_b32_random_init_forward() -> None:
    start = time.perf_counter()
    cfg = ClipModelConfig(name="ViT-B-32", img_size=224, classes=["bird", "tree"], templates=["a {}."])
    torch.manual_seed(0)
    model = FAMILY.build(cfg).eval()
    tokens = FAMILY.tokenizer(cfg)(["a photo of a bird.", "a photo of a tree."])
    with torch.no_grad():
        out = FAMILY.forward(model, {"image": torch.randn(2, 3, 224, 224), "tokens": tokens}, PLAIN)
    assert out["image_features"].shape == (2, 512) and out["text_features"].shape == (2, 512)
    assert out["logits"].shape == (2, 2) and tokens.shape == (2, 77)
    assert time.perf_counter() - start < 60


def test_text_forward_stops_after_the_last_eot_and_matches_open_clips() -> None:
    torch.manual_seed(0)
    trimmed = FAMILY.build(CFG)
    assert type(trimmed).__name__ == "TrimmedTextCLIP"
    full = open_clip.model.CLIP.encode_text
    tokens = FAMILY.tokenizer(CFG)(["a bird.", "a photo of a bicycle on a snowy mountain road at dawn."])
    seen: list[int] = []
    hook = trimmed.transformer.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    got = trimmed.encode_text(tokens, normalize=True)
    hook.remove()
    assert seen == [int(tokens.argmax(-1).max()) + 1] and seen[0] < tokens.shape[1]
    torch.testing.assert_close(got, full(trimmed, tokens, normalize=True), atol=1e-6, rtol=1e-5)
    grads = []
    for encode in (trimmed.encode_text, lambda t: full(trimmed, t)):
        trimmed.zero_grad()
        encode(tokens).square().sum().backward()
        grads.append(trimmed.token_embedding.weight.grad.clone())
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[1].abs().max()  # float summation order
