"""The core loop: a tiny run learns, NaN losses name their batch, empty masks are counted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from unspur.config import LossConfig, ModelConfig, SpuriousWorldConfig, TrainConfig
from unspur.data.spuriousworld import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset
from unspur.losses import LOSSES, LossSpec, get_loss
from unspur.models import build_model
from unspur.training import (
    NonFiniteLossError,
    apply_trainable,
    evaluate,
    fit,
    improves,
    make_optimizer,
    make_scheduler,
    seed_everything,
    selection_note,
    train_one_epoch,
)

SIZE = 32


@pytest.fixture(scope="module")
def tables():
    cfg = SpuriousWorldConfig(
        image_size=SIZE,
        classes=["bird", "tree"],
        backgrounds=["water", "snow"],
        n_train=24,
        n_val=8,
        n_test=4,
        object_scale=0.8,
    )
    return generate_tables(cfg, splits=("train", "val"))


def _model() -> torch.nn.Module:
    seed_everything(0)
    kwargs = {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
    return build_model(ModelConfig(name="vit_tiny_synth", num_classes=2, img_size=SIZE, kwargs=kwargs))


def _loader(tables, split="train", drop_parts_of=(), batch_size=8):
    images, parts = tables
    parts = parts[~parts["image_id"].isin(drop_parts_of)]
    ds = ImageMaskDataset(images[images["split"] == split], parts, img_size=SIZE)
    return DataLoader(ds, batch_size=batch_size, shuffle=False)


def test_tiny_erm_run_decreases_the_loss(tables):
    model = _model()
    cfg = TrainConfig(epochs=8, lr=3e-3, warmup_epochs=0, schedule="constant", batch_size=8)
    history = fit(model, _loader(tables), LOSSES["erm"], LossConfig(name="erm"), cfg)
    assert len(history) == 8
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    result = evaluate(model, _loader(tables, "val"), with_relevance=True)
    assert 0 <= result["acc"] <= 1 and 0 <= result["wga"] <= result["acc"] + 1e-9
    assert set(result["per_group"]) <= {"bird/water", "bird/snow", "tree/water", "tree/snow"}
    assert 0 <= result["align_mass_in"] <= 1 and result["align_n"] == 8


def test_cft_epoch_counts_images_without_a_mask(tables):
    images, _ = tables
    no_mask = list(images[images["split"] == "train"]["image_id"][:5])
    model, base = _model(), _model()
    loss_cfg = LossConfig(name="cft", lambda_kl=0.5)
    opt = make_optimizer(model, TrainConfig(lr=1e-4))
    terms = train_one_epoch(
        model, _loader(tables, drop_parts_of=no_mask), LOSSES["cft"], loss_cfg, opt, base_model=base
    )
    assert terms["n_no_mask"] == 5
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    assert {"concept", "non_concept", "cls", "kl"} <= set(terms)


def test_kl_guard_without_a_base_model_is_an_error(tables):
    model = _model()
    opt = make_optimizer(model, TrainConfig())
    with pytest.raises(ValueError, match="base_model"):
        train_one_epoch(model, _loader(tables), LOSSES["cft"], LossConfig(lambda_kl=1.0), opt)


def test_non_finite_loss_stops_with_the_batch_image_ids(tables):
    def nan_loss(*, logits, labels, cfg, **_):
        return {"loss": logits.sum() * float("nan")}

    model = _model()
    opt = make_optimizer(model, TrainConfig())
    with pytest.raises(NonFiniteLossError, match="train-000000") as info:
        train_one_epoch(model, _loader(tables, batch_size=4), LossSpec(nan_loss), None, opt)
    assert info.value.image_ids == ["train-000000", "train-000001", "train-000002", "train-000003"]


def _weighted_ce(*, logits, labels, weight, cfg):
    loss = (F.cross_entropy(logits, labels, reduction="none") * weight).sum() / weight.sum()
    return {"loss": loss, "ce": loss.detach()}


WEIGHTED = LossSpec(
    _weighted_ce,
    batch_keys=("image", "label", "weight"),
    inputs=lambda outputs, batch: {
        "logits": outputs["logits"],
        "labels": batch["label"],
        "weight": batch["weight"],
    },
)


def test_the_loop_runs_any_loss_on_the_batch_entries_it_declares(tables, monkeypatch):
    """A loss reading an entry no built-in loss knows (per-image weights) trains through the same
    loop; with unit weights it takes exactly the ERM steps. The dataset leaves masks out."""
    monkeypatch.setattr(LOSSES, "_entries", dict(LOSSES._entries))  # the registration ends with the test
    LOSSES.add("weighted_ce", WEIGHTED, type(LossConfig(name="erm")))
    images, parts = tables
    ds = ImageMaskDataset(images[images["split"] == "train"], parts, img_size=SIZE, fields=("image", "label"))
    batches = [{**b, "weight": torch.ones(len(b["label"]))} for b in DataLoader(ds, batch_size=8)]
    assert "mask" not in batches[0] and "has_mask" not in batches[0]
    runs = {}
    for name in ("weighted_ce", "erm"):
        model = _model()
        opt = make_optimizer(model, TrainConfig(lr=1e-3))
        terms = train_one_epoch(model, batches, get_loss(name), LossConfig(name="erm"), opt)
        runs[name] = (terms, [p.detach().clone() for p in model.parameters()])
    assert set(runs["weighted_ce"][0]) == {"loss", "ce"}
    assert runs["weighted_ce"][0]["loss"] == pytest.approx(runs["erm"][0]["loss"], rel=1e-6)
    for a, b in zip(runs["weighted_ce"][1], runs["erm"][1], strict=True):
        torch.testing.assert_close(a, b)
    model = _model()
    with pytest.raises(ValueError, match=r"batch entries \['weight'\]"):
        train_one_epoch(model, _loader(tables), WEIGHTED, None, make_optimizer(model, TrainConfig()))


def test_a_loss_needing_outputs_the_family_lacks_is_refused_before_training(tables):
    spec = LossSpec(_weighted_ce, needs=frozenset({"logits", "text_features"}))
    model = _model()
    with pytest.raises(ValueError, match=r"\['text_features'\] that model family 'timm'"):
        train_one_epoch(model, _loader(tables), spec, None, make_optimizer(model, TrainConfig()))


def test_schedule_warms_up_then_decays_in_steps():
    model = torch.nn.Linear(2, 2)
    cfg = TrainConfig(lr=1.0, epochs=6, warmup_epochs=1, schedule="step", lr_decay=0.5, lr_decay_every=2)
    opt = make_optimizer(model, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch=2)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2:4] == [1.0, 1.0] and lrs[4:8] == [0.5] * 4 and lrs[8:] == [0.25] * 4


def _one_step(model, params: str) -> dict[str, torch.Tensor]:
    """Parameters before one AdamW step under ``train.params``, for comparing afterwards."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model, TrainConfig(lr=1e-2, params=params, weight_decay=0.1))
    model(torch.randn(4, 3, SIZE, SIZE)).sum().backward()
    opt.step()
    return before


def test_params_qk_trains_only_queries_and_keys():
    model = _model()
    before = _one_step(model, "qk")
    dim = model.blocks[0].attn.qkv.out_features // 3
    for name, p in model.named_parameters():
        moved = (p.detach() - before[name]).abs()
        if name.endswith("attn.qkv.weight") or name.endswith("attn.qkv.bias"):
            assert moved[: 2 * dim].max() > 0, name  # query and key rows learn
            assert moved[2 * dim :].max() == 0, name  # value rows are held fixed
        else:
            assert moved.max() == 0, name


def test_params_attention_trains_the_attention_layers_only():
    model = _model()
    before = _one_step(model, "attention")
    for name, p in model.named_parameters():
        moved = (p.detach() - before[name]).abs().max()
        assert (moved > 0) == (".attn." in name), name
    n_attention = sum(p.numel() for n, p in model.named_parameters() if ".attn." in n)
    assert apply_trainable(model, "attention") == n_attention  # a second call changes nothing


def test_params_qk_on_a_model_without_transformer_blocks_names_the_fix():
    with pytest.raises(ValueError, match="train.params"):
        apply_trainable(torch.nn.Sequential(torch.nn.Linear(2, 2)), "qk")


def test_fit_puts_the_epoch_and_the_number_of_epochs_into_every_batch(tables):
    """Losses on a schedule (StarFT's decaying weight) read ``epoch`` / ``epochs`` from the batch."""
    seen = []

    def ce(*, logits, labels, epoch, epochs, cfg):
        seen.append((epoch, epochs))
        loss = F.cross_entropy(logits, labels)
        return {"loss": loss, "ce": loss.detach()}

    spec = LossSpec(
        ce,
        inputs=lambda outputs, batch: {
            "logits": outputs["logits"],
            "labels": batch["label"],
            "epoch": batch["epoch"],
            "epochs": batch["epochs"],
        },
    )
    cfg = TrainConfig(epochs=2, lr=1e-3, warmup_epochs=0, schedule="constant", batch_size=8)
    fit(_model(), _loader(tables), spec, None, cfg)
    assert seen == [(0, 2)] * 3 + [(1, 2)] * 3  # 24 images, batches of 8
    model = _model()
    train_one_epoch(
        model, _loader(tables), LOSSES["erm"], LossConfig(name="erm"), make_optimizer(model, TrainConfig())
    )


def test_improves_needs_a_better_score_and_the_margins_over_the_start():
    start = {"acc": 0.80, "wga": 0.50}
    # plain rule: a strictly better (wga, acc) replaces the kept weights, a tie does not
    assert improves("best_wga", {"acc": 0.70, "wga": 0.525}, start, start)
    assert not improves("best_wga", {"acc": 0.80, "wga": 0.50}, start, start)
    assert improves("best_wga", {"acc": 0.81, "wga": 0.50}, start, start)
    # min_gain: one image of a 40-image group is not enough, two are (0.50 + 0.05 with float error)
    assert not improves("best_wga", {"acc": 0.80, "wga": 0.525}, start, start, min_gain=0.05)
    assert improves("best_wga", {"acc": 0.80, "wga": 22 / 40}, start, start, min_gain=0.05)
    # max_drop: the other accuracy (acc under best_wga) may fall at most this far below the start's
    assert not improves("best_wga", {"acc": 0.78, "wga": 0.70}, start, start, max_drop=0.01)
    assert improves("best_wga", {"acc": 0.79, "wga": 0.70}, start, start, max_drop=0.01)
    assert not improves("best_acc", {"acc": 0.90, "wga": 0.45}, start, start, max_drop=0.01)
    # the margins are against the start, the score against the weights kept so far
    kept = {"acc": 0.80, "wga": 0.60}
    assert not improves("best_wga", {"acc": 0.80, "wga": 0.575}, kept, start, min_gain=0.05)
    assert improves("best_wga", {"acc": 0.80, "wga": 0.625}, kept, start, min_gain=0.05)
    assert not improves("last", {"acc": 1.0, "wga": 1.0}, start, start)


def test_selection_note_names_the_margins_when_the_start_is_kept():
    start = {"acc": 0.8, "wga": 0.5}
    note = selection_note("best_wga", -1, 10, start, start, "val", min_gain=0.05, max_drop=0.01)
    assert note == (
        "no epoch improved on the starting model's val wga 0.500 by 0.05 or more "
        "without losing more than 0.01 acc; kept it"
    )
    assert selection_note("best_wga", -1, 10, start, start, "val") == (
        "no epoch improved on the starting model's val wga 0.500; kept it"
    )
