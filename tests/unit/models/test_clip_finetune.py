"""CLIP fine-tuning pieces: StarFT's spurious captions in the dataset, the teacher outputs of the
clip family (and their caption cache), and one FLYP / StarFT step of a real-size ViT-B-32."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from unspur.config import ClipModelConfig, SpuriousWorldConfig, TrainConfig
from unspur.config.finetune import SpuriousCaptionConfig
from unspur.data.spuriousworld import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset
from unspur.losses import get_loss
from unspur.losses.starft import STARFT_BATCH, STARFT_NEEDS
from unspur.models.families import get_family
from unspur.spurious_templates import SPURIOUS_TEMPLATES, pick_template, run_templates
from unspur.training import make_optimizer, train_one_epoch

FAMILY = get_family("clip")
CFG = ClipModelConfig(classes=["bird", "airplane", "bicycle", "tree"], img_size=32)


@pytest.fixture(scope="module")
def images():
    return generate_tables(
        SpuriousWorldConfig(image_size=32, n_train=8, n_val=1, n_test=1), splits=("train",)
    )[0]


def test_templates_are_picked_by_image_id_and_from_a_bank(tmp_path) -> None:
    templates = run_templates(None, ["background", "texture"])
    assert templates == [*SPURIOUS_TEMPLATES["background"], *SPURIOUS_TEMPLATES["texture"]]
    assert pick_template(templates, "train-000001") == pick_template(list(templates), "train-000001")
    assert len({pick_template(templates, f"train-{i:06d}") for i in range(40)}) > 10  # spread out
    with pytest.raises(ValueError, match="no kinds"):
        run_templates(None, ["colour"])
    with pytest.raises(ValueError, match="not kinds of the built-in"):
        SpuriousCaptionConfig(kinds=["colour"])
    assert SpuriousCaptionConfig(bank="x.json", kinds=["colour"]).kinds == ["colour"]


def test_dataset_yields_one_deterministic_spurious_caption_per_image(images) -> None:
    tokenizer = FAMILY.tokenizer(CFG)
    templates = run_templates(None, ["background", "texture", "resolution"])
    fields = ("image", "label", "tokens", "spurious_tokens")
    ds = ImageMaskDataset(
        images, img_size=32, fields=fields, tokenizer=tokenizer, spurious_templates=templates
    )
    again = ImageMaskDataset(
        images, img_size=32, fields=fields, tokenizer=tokenizer, spurious_templates=templates
    )
    for i in range(len(ds)):
        caption = ds.spurious_caption(i)
        assert images.class_name[i] in caption and caption == again.spurious_caption(i)
        torch.testing.assert_close(ds[i]["spurious_tokens"], tokenizer([caption])[0])
    with pytest.raises(ValueError, match="spurious_templates"):
        ImageMaskDataset(images, fields=fields, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="class_name"):
        ImageMaskDataset(
            images.drop(columns="class_name"),
            fields=fields,
            tokenizer=tokenizer,
            spurious_templates=templates,
        )


def test_teacher_outputs_come_from_the_frozen_model_and_captions_are_cached() -> None:
    torch.manual_seed(0)
    model = FAMILY.build(CFG)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():
        model.logit_scale.add_(1.0)  # the student has moved away from the teacher
    tokenizer = FAMILY.tokenizer(CFG)
    spurious = tokenizer(["a striped bird.", "a bird in the snow.", "a striped bird."])
    batch = {
        "image": torch.randn(3, 3, 32, 32),
        "tokens": tokenizer(["a", "b", "c"]),
        "spurious_tokens": spurious,
    }
    calls = []
    teacher.encode_text = lambda t, normalize=False, f=teacher.encode_text: (
        calls.append(len(t)) or f(t, normalize)
    )
    out = FAMILY.forward(model, batch, STARFT_NEEDS, base_model=teacher)
    assert set(out) == STARFT_NEEDS and calls == [2]  # two distinct captions, encoded once each
    FAMILY.forward(model, batch, STARFT_NEEDS, base_model=teacher)
    assert calls == [2]  # second step: all cached
    with torch.no_grad():
        expected = model.encode_text(spurious, normalize=True)
        torch.testing.assert_close(out["spurious_text_features"], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["teacher_spurious_text_features"], expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            out["teacher_image_features"], teacher.encode_image(batch["image"], normalize=True)
        )
    torch.testing.assert_close(
        out["teacher_logit_scale"], out["logit_scale"].detach() / torch.e, rtol=1e-4, atol=1e-4
    )
    assert not out["teacher_image_features"].requires_grad and out["spurious_text_features"].requires_grad
    with pytest.raises(ValueError, match="base_model"):
        FAMILY.forward(model, batch, STARFT_NEEDS)


def test_teacher_image_features_are_cached_per_view(images) -> None:
    torch.manual_seed(0)
    teacher = FAMILY.build(CFG).eval().requires_grad_(False)
    ds = ImageMaskDataset(images, img_size=32, fields=("image", "label"), train_aug=True)
    torch.manual_seed(3)
    items = [ds[i % len(ds)] for i in range(2 * len(ds))]  # every image, flipped or not
    assert {it["view_id"] for it in items} >= {
        f"{it['image_id']}|flip" for it in items if it["view_id"] != it["image_id"]
    }
    calls = []
    encode = teacher.encode_image
    teacher.encode_image = lambda x, normalize=False: calls.append(len(x)) or encode(x, normalize)
    for start in (0, 4, 8, 12, 0):
        batch = torch.utils.data.default_collate(items[start : start + 4])
        got = FAMILY.forward(teacher, batch, frozenset({"teacher_image_features"}), base_model=teacher)
        with torch.no_grad():
            torch.testing.assert_close(got["teacher_image_features"], encode(batch["image"], normalize=True))
    distinct = len({it["view_id"] for it in items})
    assert sum(calls) == distinct  # each view encoded once; the repeated batch hit the cache
    del batch["view_id"]  # no view ids (a hand-made batch): encoded every time
    FAMILY.forward(teacher, batch, frozenset({"teacher_image_features"}), base_model=teacher)
    assert sum(calls) == distinct + 4


def test_vit_b32_one_flyp_and_one_starft_step() -> None:
    start = time.perf_counter()
    cfg = ClipModelConfig(name="ViT-B-32", img_size=64, classes=["bird", "tree"])
    torch.manual_seed(0)
    model = FAMILY.build(cfg)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    trained = ("visual.proj", "text_projection", "logit_scale")  # no backward through the trunks: fast
    for name, p in model.named_parameters():
        p.requires_grad_(name in trained)
    tokenizer = FAMILY.tokenizer(cfg)
    batch = {
        "image": torch.randn(2, 3, 64, 64),
        "tokens": tokenizer(["a photo of a bird.", "a photo of a tree."]),
        "spurious_tokens": tokenizer(["a bird in the snow.", "a striped tree."]),
        "label": torch.tensor([0, 1]),
        "image_id": ["a", "b"],
    }
    for name, extra in (("flyp", {}), ("starft", {"lam": 1.0, "decay": "none"})):
        spec = get_loss(name)
        loss_cfg = spec_cfg(name, extra)
        optimizer = make_optimizer(model, TrainConfig(lr=1e-5))
        before = model.visual.proj.detach().clone()
        terms = train_one_epoch(
            model, [batch], spec, loss_cfg, optimizer, base_model=teacher, family="clip", epoch=0, epochs=1
        )
        assert torch.isfinite(torch.tensor(terms["loss"])) and not torch.equal(before, model.visual.proj)
        assert ("kl" in terms) == (name == "starft")
    assert set(STARFT_BATCH) <= set(batch)
    assert time.perf_counter() - start < 30


def spec_cfg(name: str, extra: dict):
    from unspur.losses import LOSSES

    return LOSSES.entry(name).config(**extra)
