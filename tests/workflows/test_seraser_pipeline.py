"""``unspur demo seraser`` end to end at tiny size: data -> concepts -> masks -> model (FLYP) ->
adapt (SEraser, checked on val first) -> evaluate, the report with the zero-shot and SEraser rows,
the check's verdict and the examples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unspur.config import ConfigError, PipelineConfig, load_config
from unspur.workflows.cli import app
from unspur.workflows.pipeline import job as pipeline

TINY = [
    "data.spuriousworld={image_size: 32, n_train: 48, n_val: 16, n_test: 16}",
    "concepts.track=false",
    "masks.overlays=0",
    "masks.track=false",
    "model.model.img_size=32",
    "model.train={epochs: 1, batch_size: 16}",
    "adapt.seraser.steps=2",
    "adapt.compute={num_cpus: 0.25, batch_size: 8}",
    "adapt.examples=2",
    "evaluate.batch_size=16",
]


def test_demo_seraser_runs_every_stage(tmp_path: Path, ray_local, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "seraser", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "SEraser worst-group gain over model" in result.output
    names = [s.name for s in pipeline.prepare(load_config(PipelineConfig, pipeline.DEMO_CONFIGS["seraser"]))]
    assert names == ["data", "concepts", "masks", "model", "adapt", "evaluate_model"]
    adapt = json.loads((out / "adapt" / "stage.json").read_text())["result"]
    check = adapt["check"]
    assert check["split"] == "val" and check["n"] == 16 and check["n_error"] == 0
    kept = "n_ok" if check["trusted"] else "n_zero_shot"  # tuned, or the zero-shot head kept for all
    assert adapt[kept] == 16 and adapt["n_error"] == 0 and adapt["complete"]
    zero_shot = json.loads((out / "evaluate" / "model" / "metrics.json").read_text())
    assert adapt["before"]["acc"] == pytest.approx(zero_shot["acc"])  # the same model, images, split
    report = (out / "report.md").read_text()
    assert "| zero-shot CLIP (FLYP) |" in report and "| SEraser (test-time prompt tuning) |" in report
    assert "## Checked before trusting test-time tuning" in report and check["note"] in report
    assert "figures/adapt_examples.png" in report and (out / "figures" / "adapt_examples.png").is_file()


def test_adapt_must_predict_the_evaluated_split() -> None:
    cfg = load_config(
        PipelineConfig, pipeline.DEMO_CONFIGS["seraser"], ["adapt.split=val", "adapt.check=null"]
    )
    with pytest.raises(ConfigError, match="predicts split 'val' but evaluate.split is 'test'"):
        pipeline.prepare(cfg)
