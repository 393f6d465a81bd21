"""``unspur demo ravl`` end to end at tiny size: digits-grid worlds -> pretrain (the zero-shot
model) -> FLYP -> regions (blank quadrants dropped) -> discover -> the region-aware fine-tune ->
evaluate every model zero-shot -> the report's zero-shot / FLYP / RaVL table."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from unspur.config import PipelineConfig, load_config
from unspur.workflows.cli import app
from unspur.workflows.pipeline import job as pipeline

TINY = [
    "pretrain_data.digits_grid={n_train: 64, n_val: 16, n_test: 16, image_size: 32}",
    "data.digits_grid={n_train: 48, n_val: 24, n_test: 16, image_size: 32}",
    "pretrain.model.img_size=32",
    "pretrain.train={epochs: 1, batch_size: 32}",
    "flyp.train={epochs: 1, batch_size: 16}",
    "regions.compute.batch_size=16",
    "discover.top=1",
    "evaluate.batch_size=16",
]


def test_demo_ravl_runs_every_stage(tmp_path: Path, ray_local, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "ravl", "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    stages = {s.name: s for s in pipeline.prepare(load_config(PipelineConfig, pipeline.DEMO_CONFIGS["ravl"]))}
    flyp, ravl = stages["flyp"].config, stages["ravl"].config
    # RaVL is FLYP's run with another loss: same start, model and optimisation
    assert ravl.init_from == flyp.init_from and ravl.train == flyp.train and ravl.model == flyp.model
    assert (
        ravl.loss.name == "ravl"
        and ravl.data.region_view == "in_place"
        and ravl.data.region_paste
        and ravl.loss.paste_target == "margin"
    )
    regions = pd.read_parquet(out / "regions" / "regions.parquet")
    cells = regions[regions["kind"] == "region"]
    assert 0 < cells.groupby("image_id").size().max() <= 2  # digit and rectangle; blank cells dropped
    flags = pd.read_parquet(out / "discover" / "flags.parquet")
    assert set(flags["split"]) == {"train", "val"} and flags["spurious"].any()
    report = (out / "report.md").read_text()
    for label in ("zero-shot (pretrained)", "FLYP", "RaVL"):
        assert f"| {label} |" in report
    assert "balanced over class x marker" in report and "| group (class/marker) |" in report
    metrics = json.loads((out / "evaluate" / "ravl" / "metrics.json").read_text())
    assert 0.0 <= metrics["wga"] <= metrics["acc"] <= 1.0
