"""``unspur demo starft`` end to end at tiny size: pretraining world and fine-tuning world ->
concepts (spurious templates) -> pretrain (the zero-shot model) -> FLYP and StarFT from it ->
evaluate every model zero-shot -> the report's zero-shot / FLYP / StarFT table."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from unspur.config import PipelineConfig, load_config
from unspur.workflows.cli import app
from unspur.workflows.pipeline import job as pipeline

TINY = [
    "pretrain_data.spuriousworld.n_train=64",
    "pretrain_data.spuriousworld.n_val=16",
    "pretrain_data.spuriousworld.image_size=32",
    "data.spuriousworld={image_size: 32, n_train: 48, n_val: 16, n_test: 16}",
    "concepts.track=false",
    "pretrain.model.img_size=32",
    "pretrain.train={epochs: 1, batch_size: 32}",
    "flyp.train={epochs: 2, batch_size: 16}",
    "evaluate.batch_size=16",
]


def test_demo_starft_runs_every_stage(tmp_path: Path, ray_local, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "starft", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "StarFT worst-group gain over flyp" in result.output
    stages = {
        s.name: s for s in pipeline.prepare(load_config(PipelineConfig, pipeline.DEMO_CONFIGS["starft"]))
    }
    assert list(stages)[:6] == ["pretrain_data", "data", "concepts", "pretrain", "flyp", "starft"]
    flyp, starft = stages["flyp"].config, stages["starft"].config
    # StarFT is FLYP's run with another loss: same start, data, model and optimisation
    assert starft.init_from == flyp.init_from and starft.train == flyp.train and starft.model == flyp.model
    assert starft.loss.name == "starft" and starft.data.spurious.bank.endswith(".json")
    assert json.loads((out / "starft" / "stage.json").read_text())["result"]
    report = (out / "report.md").read_text()
    for label in ("zero-shot (pretrained)", "FLYP", "StarFT"):
        assert f"| {label} |" in report
    metrics = json.loads((out / "evaluate" / "pretrain" / "metrics.json").read_text())
    assert 0.0 <= metrics["wga"] <= metrics["acc"] <= 1.0
