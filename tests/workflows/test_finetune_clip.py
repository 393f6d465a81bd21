"""``unspur finetune`` with the clip family: FLYP and StarFT in-process on a tiny SpuriousWorld
(the shipped CPU configs, shrunk), zero-shot classes filled from the data, best-WGA selection,
and resuming a finished run with more epochs."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from unspur.config import SpuriousWorldConfig
from unspur.models import load_checkpoint
from unspur.workflows.finetune import job

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "workflows" / "configs"
TINY = [
    "data.spuriousworld={image_size: 32, n_train: 24, n_val: 12, n_test: 2}",
    "model.img_size=32",
    "train.batch_size=12",
    "run.track=false",
]


def _summary(out: Path) -> dict:
    return json.loads((out / "finetune_summary.json").read_text())


def test_flyp_trains_selects_by_wga_and_resumes(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "finetune_flyp.yaml"), "--out", str(tmp_path), *TINY]
    assert job.main([*args, "train.epochs=1"]) == 0
    summary = _summary(tmp_path)
    assert summary["start_epochs"] == [0] and [h["epoch"] for h in summary["history"]] == [-1, 0]
    assert {"loss", "contrastive", "logit_scale"} <= set(summary["history"][1]["train"])
    best = max(summary["history"], key=lambda h: (h["eval"]["wga"], h["eval"]["acc"], -h["epoch"]))
    assert summary["select"] == "best_wga" and summary["selected_epoch"] == best["epoch"]
    assert 0.0 <= summary["final"]["wga"] <= summary["final"]["acc"] <= 1.0
    assert (tmp_path / "selected").is_dir() and summary["figure"] is None
    saved = yaml.safe_load((tmp_path / "model" / "config.yaml").read_text())
    assert saved["model"]["classes"] == SpuriousWorldConfig().classes  # filled from the table

    assert job.main([*args, "train.epochs=2"]) == 0
    resumed = _summary(tmp_path)
    assert resumed["start_epochs"] == [0, 1] and resumed["epochs_trained_this_run"] == 1
    assert [h["epoch"] for h in resumed["history"]] == [-1, 0, 1]
    assert resumed["selected_epoch"] in (-1, 0, 1)
    model, config = load_checkpoint(tmp_path / "model")
    assert config["loss"]["name"] == "flyp" and len(model.zero_shot.classes) == 4


def test_starft_trains_with_the_teacher_and_spurious_captions(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "finetune_starft.yaml"), "--out", str(tmp_path), *TINY]
    assert job.main([*args, "train.epochs=2", "data.spurious.kinds=[background, texture]"]) == 0
    summary = _summary(tmp_path)
    first, last = summary["history"][1]["train"], summary["history"][2]["train"]
    assert {"loss", "contrastive", "kl", "lambda_e", "logit_scale"} <= set(first)
    assert abs(first["lambda_e"] - 0.25) < 1e-6 and last["lambda_e"] == 0.0  # lam 0.5, linear decay
    assert first["kl"] >= 0.0 and abs(last["loss"] - last["contrastive"]) < 1e-5
    saved = yaml.safe_load((tmp_path / "model" / "config.yaml").read_text())
    assert saved["loss"]["kl_scale"] == 100.0 and saved["data"]["spurious"]["kinds"] == [
        "background",
        "texture",
    ]
