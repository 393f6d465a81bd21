"""FLYP and StarFT against hand computations; StarFT's mask, decay, scale and config."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unspur.config import ConfigError, FinetuneConfig, load_config
from unspur.losses import LOSSES, FlypLossConfig, LossConfig, StarftLossConfig, get_loss
from unspur.losses.starft import STARFT_NEEDS, decayed_weight, spuriosity_kl, starft_inputs


def _unit(rows: list[list[float]]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows), dim=1)


IMG = _unit([[1.0, 0.0, 0.2], [0.1, 1.0, 0.0], [0.3, 0.3, 1.0]])
SPUR = _unit([[0.5, 0.2, 0.9], [1.0, 0.4, 0.0], [0.0, 0.8, 0.6]])
T_IMG = _unit([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.2, 0.0, 1.0]])
T_SPUR = _unit([[0.9, 0.0, 0.4], [0.2, 1.0, 0.1], [0.4, 0.4, 0.8]])


def _dot(a: torch.Tensor, b: torch.Tensor) -> float:
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))


def _hand_kl(labels: list[int], scale: float, img=IMG, spur=SPUR, t_img=T_IMG, t_spur=T_SPUR) -> float:
    """KL(p_T || p_S) per row over the columns of other labels, averaged over all rows."""
    total = 0.0
    for i in range(len(labels)):
        cols = [j for j in range(len(labels)) if labels[j] != labels[i]]
        if not cols:
            continue  # every entry masked: both rows uniform, no divergence
        zs = [scale * _dot(img[i], spur[j]) for j in cols]
        zt = [scale * _dot(t_img[i], t_spur[j]) for j in cols]
        ns, nt = sum(math.exp(z) for z in zs), sum(math.exp(z) for z in zt)
        for a, b in zip(zs, zt, strict=True):
            p, q = math.exp(b) / nt, math.exp(a) / ns
            total += p * math.log(p / q)
    return total / len(labels)


def _hand_flyp(img: torch.Tensor, txt: torch.Tensor, scale: float) -> float:
    n = img.shape[0]
    z = [[scale * _dot(img[i], txt[j]) for j in range(n)] for i in range(n)]

    def ce(rows: list[list[float]]) -> float:
        return sum(math.log(sum(math.exp(v) for v in r)) - r[i] for i, r in enumerate(rows)) / n

    return (ce(z) + ce([list(c) for c in zip(*z, strict=True)])) / 2


def _starft(labels, epoch=0, epochs=2, cfg=None, **over):
    args = dict(
        image_features=IMG,
        text_features=SPUR,
        logit_scale=torch.tensor(10.0),
        spurious_text_features=SPUR,
        teacher_image_features=T_IMG,
        teacher_spurious_text_features=T_SPUR,
        teacher_logit_scale=torch.tensor(3.0),
        labels=torch.tensor(labels),
        epoch=epoch,
        epochs=epochs,
    )
    args.update(over)
    return get_loss("starft").fn(cfg=cfg or StarftLossConfig(), **args)


def test_flyp_is_the_symmetric_clip_loss_with_diagonal_targets() -> None:
    txt = _unit([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.6, 0.8, 0.0]])  # rows 1, 2: one class's caption
    out = get_loss("flyp").fn(
        image_features=IMG, text_features=txt, logit_scale=torch.tensor(2.5), cfg=FlypLossConfig()
    )
    assert out["loss"].item() == pytest.approx(_hand_flyp(IMG, txt, 2.5), rel=1e-5)
    assert set(out) == {"loss", "contrastive", "logit_scale"} and out["logit_scale"].item() == 2.5
    two = get_loss("flyp").fn(  # a 2x2 case written out
        image_features=torch.eye(2),
        text_features=torch.tensor([[1.0, 0.0], [0.6, 0.8]]),
        logit_scale=torch.tensor(2.0),
        cfg=FlypLossConfig(),
    )
    rows = (math.log(math.exp(2) + math.exp(1.2)) - 2) + (math.log(1 + math.exp(1.6)) - 1.6)
    cols = (math.log(math.exp(2) + 1) - 2) + (math.log(math.exp(1.2) + math.exp(1.6)) - 1.6)
    assert two["loss"].item() == pytest.approx((rows / 2 + cols / 2) / 2, rel=1e-6)


def test_starft_kl_matches_a_hand_computation_with_the_teacher_scale_for_both() -> None:
    out = _starft([0, 1, 2], epoch=0, epochs=2)
    kl = _hand_kl([0, 1, 2], 3.0)  # s0 = the teacher's scale, not the student's 10
    assert out["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert out["kl"].item() != pytest.approx(_hand_kl([0, 1, 2], 10.0), rel=1e-3)
    assert out["lambda_e"].item() == pytest.approx(0.25)
    flyp = _hand_flyp(IMG, SPUR, 10.0)
    assert out["contrastive"].item() == pytest.approx(flyp, rel=1e-5)
    assert out["loss"].item() == pytest.approx(flyp + 0.25 * kl, rel=1e-5)
    assert set(out) == {"loss", "contrastive", "kl", "lambda_e", "logit_scale"}


@pytest.mark.parametrize("labels", [[0, 1, 0], [1, 1, 0], [0, 0, 0]])
def test_starft_masks_same_label_entries_diagonal_included(labels) -> None:
    out = _starft(labels)
    assert out["kl"].item() == pytest.approx(_hand_kl(labels, 3.0), rel=1e-5, abs=1e-9)
    if len(set(labels)) == 1:
        assert out["kl"].item() == pytest.approx(0.0, abs=1e-9)
    # a masked entry cannot matter: move sample 2's spurious caption; with labels [0, 1, 0] only
    # row 1 sees column 2 (rows 0 and 2 share its label)
    moved = SPUR.clone()
    moved[2] = _unit([[1.0, -1.0, 0.3]])[0]
    kl = spuriosity_kl(IMG, moved, T_IMG, T_SPUR, torch.tensor(labels), 3.0)
    assert kl.item() == pytest.approx(_hand_kl(labels, 3.0, spur=moved), rel=1e-5, abs=1e-9)


def test_with_two_samples_of_two_labels_only_the_diagonal_is_masked_and_kl_is_zero() -> None:
    """Each row keeps one entry (the other sample's caption): both softmaxes are one-hot."""
    kl = spuriosity_kl(IMG[:2], SPUR[:2], T_IMG[:2], T_SPUR[:2], torch.tensor([0, 1]), 3.0)
    assert kl.item() == pytest.approx(0.0, abs=1e-9)


def _hand_rows(labels, scale, img, spur, t_img, t_spur):
    """Per row i: {class c: (teacher probs, student probs)} over the columns of c != label_i."""
    rows = []
    for i in range(len(labels)):
        cols = [j for j in range(len(labels)) if labels[j] != labels[i]]
        zs = {j: math.exp(scale * _dot(img[i], spur[j])) for j in cols}
        zt = {j: math.exp(scale * _dot(t_img[i], t_spur[j])) for j in cols}
        ns, nt = sum(zs.values()), sum(zt.values())
        rows.append(
            {
                c: (
                    [zt[j] / nt for j in cols if labels[j] == c],
                    [zs[j] / ns for j in cols if labels[j] == c],
                )
                for c in {labels[j] for j in cols}
            }
        )
    return rows


def test_kl_parts_are_the_class_marginal_and_the_teacher_weighted_within_class_kls() -> None:
    """Chain rule over the class of each column: full KL = class-marginal KL + within-class part."""
    gen = torch.Generator().manual_seed(3)
    img, spur, t_img, t_spur = (F.normalize(torch.randn(7, 4, generator=gen), dim=1) for _ in range(4))
    labels = [0, 1, 2, 0, 1, 2, 2]
    marginal = within = 0.0
    for row in _hand_rows(labels, 4.0, img, spur, t_img, t_spur):
        for pt, ps in row.values():
            mt, ms = sum(pt), sum(ps)
            marginal += mt * math.log(mt / ms)
            within += mt * sum(a / mt * math.log((a / mt) / (b / ms)) for a, b in zip(pt, ps, strict=True))
    y = torch.tensor(labels)
    got = spuriosity_kl(img, spur, t_img, t_spur, y, 4.0, part="within_class")
    assert got.item() == pytest.approx(within / len(labels), rel=1e-5)
    got_marginal = spuriosity_kl(img, spur, t_img, t_spur, y, 4.0, part="class_marginal")
    assert got_marginal.item() == pytest.approx(marginal / len(labels), rel=1e-5)
    full = spuriosity_kl(img, spur, t_img, t_spur, y, 4.0)
    assert full.item() == pytest.approx((marginal + within) / len(labels), rel=1e-5)
    assert 0 < got.item() < full.item()
    student = [t.clone().requires_grad_(True) for t in (img, spur)]
    teacher = [t.clone().requires_grad_(True) for t in (t_img, t_spur)]
    for part in ("class_marginal", "within_class"):
        spuriosity_kl(*student, *teacher, y, 100.0, part=part).backward()
    assert all(
        t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0 for t in student
    )
    assert all(t.grad is None for t in teacher)
    with pytest.raises(ValueError, match="within_class"):
        spuriosity_kl(img, spur, t_img, t_spur, y, 4.0, part="classes")


def test_within_class_part_is_zero_with_one_caption_per_other_class() -> None:
    """Each class's conditional is one-hot: only the class-marginal part is left."""
    kl = spuriosity_kl(IMG, SPUR, T_IMG, T_SPUR, torch.tensor([0, 1, 2]), 3.0, part="within_class")
    assert kl.item() == pytest.approx(0.0, abs=1e-7)
    assert spuriosity_kl(IMG, SPUR, T_IMG, T_SPUR, torch.tensor([0, 1, 2]), 3.0).item() > 1e-4


def test_kl_part_reaches_the_loss() -> None:
    full = _starft([0, 1, 2])
    within = _starft([0, 1, 2], cfg=StarftLossConfig(kl_part="within_class"))
    assert full["kl"].item() > 1e-4 and within["kl"].item() == pytest.approx(0.0, abs=1e-7)


def test_kl_scale_overrides_the_scale_of_both_logits() -> None:
    out = _starft([0, 1, 2], cfg=StarftLossConfig(kl_scale=7.0))
    assert out["kl"].item() == pytest.approx(_hand_kl([0, 1, 2], 7.0), rel=1e-5)


def test_kl_is_zero_when_teacher_and_student_agree_and_grads_reach_the_student_only() -> None:
    img = IMG.clone().requires_grad_(True)
    spur = SPUR.clone().requires_grad_(True)
    t_img = IMG.clone().requires_grad_(True)
    out = _starft(
        [0, 1, 2],
        image_features=img,
        spurious_text_features=spur,
        teacher_image_features=t_img,
        teacher_spurious_text_features=SPUR.clone(),
    )
    assert out["kl"].item() == pytest.approx(0.0, abs=1e-7)
    out["loss"].backward()
    assert img.grad is not None and spur.grad is not None and t_img.grad is None


def test_decay_schedule_is_linear_to_zero_at_the_last_epoch() -> None:
    got = [decayed_weight(0.5, e, 4) for e in range(4)]
    assert got == pytest.approx([0.375, 0.25, 0.125, 0.0])
    assert [decayed_weight(0.5, e, 4, "none") for e in range(4)] == [0.5] * 4
    for e, w in enumerate(got):
        out = _starft([0, 1, 2], epoch=e, epochs=4)
        assert out["lambda_e"].item() == pytest.approx(w)
        assert out["loss"].item() == pytest.approx(out["contrastive"].item() + w * out["kl"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="epoch must be in"):
        decayed_weight(0.5, 4, 4)


def test_starft_reads_epoch_from_the_batch_and_says_when_it_is_missing() -> None:
    outputs = {k: torch.zeros(()) for k in STARFT_NEEDS}
    args = starft_inputs(outputs, {"label": torch.zeros(3), "epoch": 1, "epochs": 3})
    assert args["epoch"] == 1 and args["epochs"] == 3 and set(STARFT_NEEDS) < set(args)
    with pytest.raises(ValueError, match=r"train_one_epoch\(\.\.\., epoch=e, epochs=E\)"):
        starft_inputs(outputs, {"label": torch.zeros(3)})


def test_clip_losses_are_registered_with_what_they_read() -> None:
    flyp, starft = LOSSES["flyp"], LOSSES["starft"]
    assert flyp.batch_keys == ("image", "tokens", "label")
    assert flyp.needs == {"image_features", "text_features", "logit_scale"}
    assert starft.batch_keys == ("image", "tokens", "spurious_tokens", "label")
    assert starft.needs == flyp.needs | {
        "spurious_text_features",
        "teacher_image_features",
        "teacher_spurious_text_features",
        "teacher_logit_scale",
    }
    assert not flyp.needs_relevance and not starft.needs_relevance
    assert starft.outputs_for(StarftLossConfig()) == starft.needs


def test_starft_config_loads_from_yaml_and_rejects_unknown_keys(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("loss: {name: starft, lam: 0.5}\n")
    cfg = load_config(FinetuneConfig, path)
    assert isinstance(cfg.loss, StarftLossConfig)
    assert (cfg.loss.lam, cfg.loss.kl_scale, cfg.loss.decay, cfg.loss.kl_weight) == (0.5, None, "linear", 0.0)
    assert load_config(FinetuneConfig, path, ["loss.kl_scale=100"]).loss.kl_scale == 100.0
    with pytest.raises(ConfigError, match="loss.lambda_align"):
        load_config(FinetuneConfig, path, ["loss.lambda_align=0.3"])
    with pytest.raises(ConfigError, match="loss.kl_scale"):
        load_config(FinetuneConfig, path, ["loss.kl_scale=0"])
    assert isinstance(LossConfig(name="flyp"), FlypLossConfig)
