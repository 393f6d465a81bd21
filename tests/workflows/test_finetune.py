"""``unspur finetune`` end to end: in-process, and Ray Train with 2 CPU workers killed and resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from unspur.config import FinetuneConfig, load_config
from unspur.losses import LOSSES
from unspur.models import load_checkpoint
from unspur.workflows.finetune import job
from unspur.workflows.finetune.loop import initial_model

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.spuriousworld.image_size=32",
    "data.spuriousworld.n_train=24",
    "data.spuriousworld.n_val=1",
    "data.spuriousworld.n_test=12",
    "model.img_size=32",
    "model.kwargs={depth: 1, embed_dim: 48, num_heads: 2}",
    "train.batch_size=8",
    "run.figure_images=2",
]


def _mlflow_history(out: Path, run_id: str, key: str) -> list[int]:
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_in_process_cft_writes_model_metrics_figure_and_resumes(tmp_path: Path) -> None:
    args = ["--out", str(tmp_path), *TINY, "loss.name=cft", "train.epochs=2"]
    assert job.main(args) == 0
    summary = json.loads((tmp_path / "finetune_summary.json").read_text())
    assert summary["start_epochs"] == [0] and [h["epoch"] for h in summary["history"]] == [-1, 0, 1]
    assert {"loss", "concept", "non_concept", "align", "cls", "kl", "n_no_mask"} <= set(
        summary["history"][1]["train"]
    )
    assert 0.0 <= summary["final"]["acc"] <= 1.0 and "align_mass_in" in summary["final"]
    model, config = load_checkpoint(tmp_path / "model")
    assert config["loss"]["name"] == "cft" and config["out"] == str(tmp_path)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    assert (tmp_path / "relevance_before_after.png").stat().st_size > 1000
    run_id = summary["mlflow_run_id"]
    assert _mlflow_history(tmp_path, run_id, "train.concept") == [1, 2]
    assert _mlflow_history(tmp_path, run_id, "eval.acc") == [0, 1, 2]
    artifacts = list((tmp_path / "mlartifacts").rglob("*"))
    assert any(p.name == "model.safetensors" for p in artifacts)
    assert any(p.name == "relevance_before_after.png" for p in artifacts)

    assert job.main(["--out", str(tmp_path), *TINY, "loss.name=cft", "train.epochs=3"]) == 0
    resumed = json.loads((tmp_path / "finetune_summary.json").read_text())
    assert resumed["start_epochs"] == [0, 2] and resumed["epochs_trained_this_run"] == 1
    assert resumed["mlflow_run_id"] == run_id
    assert _mlflow_history(tmp_path, run_id, "train.loss") == [1, 2, 3]


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    assert job.main(["--out", str(tmp_path), "loss.lambda_kl=0.5"]) == 2  # KL guard needs init_from
    assert job.main(["--out", str(tmp_path), "model.num_classes=3"]) == 2  # 4 SpuriousWorld classes
    cfg = load_config(FinetuneConfig, None, [f"out={tmp_path}", "relevance=gradcam"])
    with pytest.raises(ValueError, match="unknown relevance method 'gradcam'"):
        job.run(cfg)
    other = load_config(FinetuneConfig, None, [f"out={tmp_path}", f"init_from={tmp_path / 'nope'}"])
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        job.run(other)
    with pytest.raises(ValueError, match="num_workers=0 trains in-process"):
        job.build(load_config(FinetuneConfig, None, [f"out={tmp_path}"]))


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


def test_ray_train_two_workers_resumes_after_the_driver_is_killed(ray_local, tmp_path: Path, capsys) -> None:
    ray = ray_local
    args = ["--out", str(tmp_path), *TINY, "loss.name=cft", "run.num_workers=2", "run.name=killed"]
    storage = tmp_path / "checkpoints" / "killed"
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(REPO)}
    code = "import sys; from unspur.workflows.finetune import main; raise SystemExit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args, "train.epochs=40"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: (storage / "checkpoint_manager_snapshot.json").is_file() or proc.poll() is not None,
            240,
            "the first Ray Train checkpoint",
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the driver ended before it could be killed"
    _wait_for(lambda: ray.available_resources().get("CPU", 0) >= 2, 60, "the killed run's workers to exit")
    # Ray resumes from the last checkpoint it registered; workers orphaned by the kill may have
    # uploaded later ones, so the newest folder only bounds the resume epoch from above.
    newest = max(json.loads(p.read_text())["epoch"] for p in storage.glob("checkpoint_*/extra.json"))
    epochs = newest + 2

    assert job.main([*args, f"train.epochs={epochs}"]) == 0
    summary = json.loads((tmp_path / "finetune_summary.json").read_text())
    first, resumed_at = summary["start_epochs"]
    assert first == 0 and 1 <= resumed_at <= newest + 1, "the rerun must resume from a checkpoint"
    assert summary["epochs_trained_this_run"] == epochs - resumed_at
    assert [h["epoch"] for h in summary["history"]] == list(range(-1, epochs))
    steps = _mlflow_history(tmp_path, summary["mlflow_run_id"], "train.loss")
    assert set(steps) == set(range(1, epochs + 1))
    loaded, _ = load_checkpoint(tmp_path / "model")
    assert loaded(torch.zeros(2, 3, 32, 32)).shape == (2, 4)

    # a base checkpoint of another architecture fails on the workers with one clear line
    other = [
        "--out",
        str(tmp_path / "other"),
        *TINY,
        "loss.name=cft",
        "run.num_workers=2",
        "run.max_failures=0",
        f"init_from={tmp_path / 'model'}",
        "model.name=hybrid_tiny_synth",
    ]
    assert job.main(other) == 2
    assert "holds vit_tiny_synth" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((REPO / "workflows" / "configs").glob("finetune_*.yaml")))
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(FinetuneConfig, path)
    assert cfg.out and cfg.model.name and cfg.loss.name in LOSSES


def test_resume_refuses_a_checkpoint_of_another_objective(tmp_path: Path) -> None:
    assert (
        job.main(["--out", str(tmp_path), *TINY, "loss.name=erm", "train.epochs=1", "run.figure_images=0"])
        == 0
    )
    # same run name and folder, another loss: resuming would mix two runs -> a one-line error
    assert (
        job.main(["--out", str(tmp_path), *TINY, "loss.name=cft", "train.epochs=2", "run.figure_images=0"])
        == 2
    )


def test_select_saves_the_best_validation_epoch(tmp_path: Path) -> None:
    args = [
        "--out",
        str(tmp_path),
        *TINY,
        "data.spuriousworld.n_val=32",
        "data.eval_split=val",
        "loss.name=erm",
        "train.epochs=4",
        "train.lr=0.01",
        "run.select=best_acc",
        "run.figure_images=0",
        "run.track=false",
    ]
    assert job.main(args) == 0
    summary = json.loads((tmp_path / "finetune_summary.json").read_text())
    # the starting model (epoch -1) is a candidate; ties go to the earlier epoch
    best = max(summary["history"], key=lambda h: (h["eval"]["acc"], h["eval"]["wga"], -h["epoch"]))
    assert summary["select"] == "best_acc" and summary["selected_epoch"] == best["epoch"]
    assert summary["kept_start"] == (best["epoch"] == -1) and summary["selection"].endswith("kept it")
    assert summary["final"] == best["eval"]
    history = summary["history"]  # what a sweep trial reports: the best so far, the start included
    for i, record in enumerate(history):
        if record["epoch"] >= 0:
            so_far = max(history[: i + 1], key=lambda h: (h["eval"]["acc"], h["eval"]["wga"], -h["epoch"]))
            assert record["kept"] == so_far["eval"]
    saved, _ = load_checkpoint(tmp_path / "model")
    chosen, _ = load_checkpoint(tmp_path / "selected")
    for (name, a), b in zip(saved.state_dict().items(), chosen.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # extended by 2 epochs: the run resumes and the choice still covers every trained epoch
    assert job.main([*(a for a in args if a != "train.epochs=4"), "train.epochs=6"]) == 0
    resumed = json.loads((tmp_path / "finetune_summary.json").read_text())
    assert resumed["start_epochs"] == [0, 4]
    best = max(resumed["history"], key=lambda h: (h["eval"]["acc"], h["eval"]["wga"], -h["epoch"]))
    assert resumed["selected_epoch"] == best["epoch"] and resumed["final"] == best["eval"]
    # choosing an epoch on the test split is refused before training
    assert job.main(["--out", str(tmp_path / "t"), *TINY, "run.select=best_wga"]) == 2


def test_select_keeps_the_starting_model_when_no_epoch_beats_it(tmp_path: Path) -> None:
    """Do no harm: with a learning rate too small to change a prediction, no epoch beats the
    starting model's val score (ties keep the earlier weights), so it is returned unchanged, and
    the summary, the MLflow run and a resumed run say so."""
    args = ["--out", str(tmp_path), *TINY, "data.spuriousworld.n_val=16", "data.eval_split=val"]
    args += ["loss.name=erm", "train.lr=1e-12", "run.select=best_wga", "run.figure_images=0"]
    assert job.main([*args, "train.epochs=2"]) == 0
    summary = json.loads((tmp_path / "finetune_summary.json").read_text())
    assert summary["selected_epoch"] == -1 and summary["kept_start"]
    assert summary["final"] == summary["initial"]
    wga = summary["initial"]["wga"]
    assert summary["selection"] == f"no epoch improved on the starting model's val wga {wga:.3f}; kept it"
    expected = initial_model(load_config(FinetuneConfig, None, list(TINY))).state_dict()
    saved, _ = load_checkpoint(tmp_path / "model")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(summary["mlflow_run_id"])
    assert run.data.tags["selection"] == summary["selection"] and run.data.metrics["selected_epoch"] == -1
    # resumed for one more epoch: compared against exactly the kept (starting) weights
    assert job.main([*args, "train.epochs=3"]) == 0
    resumed = json.loads((tmp_path / "finetune_summary.json").read_text())
    assert resumed["start_epochs"] == [0, 2] and resumed["selected_epoch"] == -1
    assert resumed["final"] == summary["initial"]


def test_select_margins_keep_the_starting_model_unless_an_epoch_clears_them(tmp_path: Path) -> None:
    """``run.min_gain``: an epoch must beat the start by that much; accuracy cannot rise by 1 from
    a start above 0, so every epoch falls short and the start is kept, and the summary says why."""
    args = ["--out", str(tmp_path), *TINY, "data.spuriousworld.n_val=16", "data.eval_split=val"]
    args += ["loss.name=erm", "train.lr=0.01", "run.select=best_acc", "run.figure_images=0"]
    args += ["run.min_gain=1.0", "run.max_drop=0.5", "run.track=false", "train.epochs=2"]
    assert job.main(args) == 0
    summary = json.loads((tmp_path / "finetune_summary.json").read_text())
    assert summary["initial"]["acc"] > 0 and summary["selected_epoch"] == -1
    assert summary["final"] == summary["initial"]
    assert summary["selection"].endswith("by 1 or more without losing more than 0.5 wga; kept it")


def test_cft_trains_on_attnlrp_relevance(tmp_path: Path) -> None:
    """``relevance: attnlrp`` end to end: CFT trains through it, evaluation and the figure use it."""
    args = ["--out", str(tmp_path), *TINY, "loss.name=cft", "relevance=attnlrp", "train.epochs=1"]
    assert job.main([*args, "run.track=false"]) == 0
    summary = json.loads((tmp_path / "finetune_summary.json").read_text())
    assert summary["history"][1]["train"]["align"] > 0 and "align_mass_in" in summary["final"]
    assert (tmp_path / "relevance_before_after.png").stat().st_size > 1000
    assert job.main(["--out", str(tmp_path / "x"), *TINY, "relevance=lrp"]) == 2  # unknown: one-line error
