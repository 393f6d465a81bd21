"""``unspur run`` end to end on a tiny SpuriousWorld: every stage, reuse on rerun, resume after a
failed stage, and errors named before anything runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unspur.config import ConfigError, PipelineConfig, apply_overrides, load_config
from unspur.workflows.pipeline import job as pipeline

TINY_MODEL = {
    "name": "vit_tiny_synth",
    "img_size": 32,
    "kwargs": {"depth": 1, "embed_dim": 48, "num_heads": 2},
}


def _tiny(out: Path) -> Path:
    """The demo's stage list with every stage shrunk (its sections merged into the stages)."""
    sections = {
        "out": str(out),
        "data": {"spuriousworld": {"image_size": 32, "n_train": 48, "n_val": 16, "n_test": 32}},
        "concepts": {"backend": "wordnet", "kinds": ["important"], "track": False},
        "masks": {
            "validation": {"images_per_class": 4, "min_coverage": 0.02},
            "overlays": 0,
            "compute": {"num_cpus": 0.25, "batch_size": 16},
            "track": False,
        },
        "base": {"model": TINY_MODEL, "train": {"epochs": 1, "batch_size": 16}, "run": {"figure_images": 0}},
        "cft": {
            "train": {"epochs": 1, "batch_size": 8},
            "fewshot": {"per_class": 2},
            "run": {"figure_images": 2, "select": "best_wga"},
        },
        "evaluate": {"batch_size": 32},
    }
    cfg = apply_overrides(yaml.safe_load(pipeline.DEMO_CONFIG.read_text()), sections)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_pipeline_runs_every_stage_then_reuses_them(tmp_path: Path, ray_local, monkeypatch, capsys) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    config = _tiny(out)
    assert pipeline.main(["--config", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "CFT worst-group gain over base" in printed and f"unspur ui --out {out}" in printed
    names = [s.name for s in pipeline.prepare(load_config(PipelineConfig, config))]
    assert names == [
        "data",
        "concepts",
        "masks",
        "base",
        "cft",
        "control",
        "evaluate_base",
        "evaluate_cft",
        "evaluate_control",
    ]
    for name in names:
        assert (
            Path(pipeline.prepare(load_config(PipelineConfig, config))[names.index(name)].config.out)
            / "stage.json"
        ).is_file()
    report = (out / "report.md").read_text()
    assert "wga" in report and "figures/cft_relevance_before_after.png" in report
    assert "## Weights kept by run.select" in report
    for name in ("cft", "control"):  # the starting model (the base) is a candidate of run.select
        summary = json.loads((out / name / "finetune_summary.json").read_text())
        assert summary["selected_epoch"] in (-1, 0) and summary["selection"].endswith("; kept it")
        assert f"- `{name}`: {summary['selection']}\n" in report
    assert "- `base`: " not in report.split("## Weights kept by run.select")[1].split("##")[0]
    assert (out / "figures" / "cft_relevance_before_after.png").is_file()
    metrics = json.loads((out / "evaluate" / "cft" / "metrics.json").read_text())
    assert 0.0 <= metrics["wga"] <= metrics["acc"] <= 1.0

    # a rerun reuses every finished stage before cft; a changed cft section reruns cft and what follows
    cfg = load_config(PipelineConfig, config, ["cft.train.lr=0.0002"])
    result = pipeline.run(cfg, log=lambda _: None)
    assert set(result["reused_stages"]) == {"data", "concepts", "masks", "base"}
    assert json.loads((out / "cft" / "stage.json").read_text())["result"]["start_epochs"] == [
        0
    ]  # fresh, not resumed

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pipeline")
    runs = client.search_runs([exp.experiment_id])
    parents = {r.info.run_id for r in runs if r.info.run_name == "pipeline"}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") in parents]
    assert {r.info.run_name for r in children} >= {"cft", "control", "evaluate_cft"}


def test_failed_stage_resumes_from_the_last_finished_one(tmp_path: Path, ray_local, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(PipelineConfig, _tiny(tmp_path / "run"), ["control.enabled=false"])
    stages = pipeline.prepare(cfg)
    calls: list[str] = []

    def boom(_cfg):
        raise RuntimeError("injected failure in concepts")

    failing = [pipeline.Stage(s.name, s.config, boom) if s.name == "concepts" else s for s in stages[:3]]
    with pytest.raises(RuntimeError, match="injected"):
        pipeline.run(cfg, failing, log=calls.append)
    assert (Path(stages[0].config.out) / "stage.json").is_file()  # data finished
    assert not (Path(stages[1].config.out) / "stage.json").exists()
    calls.clear()
    pipeline.run(cfg, stages[:3], log=calls.append)
    assert any("data: reusing" in c for c in calls) and any("concepts: running" in c for c in calls)


def test_bad_sections_and_missing_inputs_fail_before_running(tmp_path: Path) -> None:
    config = _tiny(tmp_path / "run")
    with pytest.raises(ConfigError, match="cft"):
        pipeline.prepare(load_config(PipelineConfig, config, ["cft.train.lrr=1"]))
    with pytest.raises(ConfigError, match="cft"):
        pipeline.prepare(load_config(PipelineConfig, config, ["cft.loss.name=erm"]))
    with pytest.raises(ConfigError, match="'nope', which is not an earlier stage"):
        pipeline.prepare(load_config(PipelineConfig, config, ["masks.bank=${nope.bank}"]))
    with pytest.raises(ConfigError, match="'base' has no key 'weights'"):
        pipeline.prepare(load_config(PipelineConfig, config, ["cft.init_from=${base.weights}"]))
    with pytest.raises(ConfigError, match="disabled stage"):
        pipeline.prepare(load_config(PipelineConfig, config, ["base.enabled=false"]))
    with pytest.raises(ConfigError, match="unknown job 'finetun'"):
        pipeline.prepare(load_config(PipelineConfig, config, ["base.job=finetun"]))
    assert pipeline.main(["--config", str(config), "masks.segmenter.name=sam9"]) == 2
    assert not (tmp_path / "run").exists()


def test_demo_config_plans() -> None:
    stages = pipeline.prepare(load_config(PipelineConfig, pipeline.DEMO_CONFIG))
    assert stages[-1].name == "evaluate_control"


def test_optional_sweep_stage_tunes_cft_and_its_best_model_is_evaluated(
    tmp_path: Path, ray_local, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump(
            {
                "method": "cft",
                "search": "grid",
                "scheduler": {"name": "fifo"},
                "params": {"loss.lambda_align": {"type": "grid", "values": [0.2, 0.8]}},
            }
        )
    )
    out = tmp_path / "run"
    cfg = load_config(
        PipelineConfig,
        _tiny(out),
        [
            "control.enabled=false",
            "sweep.enabled=true",
            f"sweep.space={space}",
            "sweep.max_concurrent_trials=1",
        ],
    )
    stages = pipeline.prepare(cfg)
    names = [s.name for s in stages]
    assert names[-4:] == ["sweep", "evaluate_base", "evaluate_cft", "evaluate_sweep"]
    trial = stages[names.index("sweep")].config.finetune
    cft = stages[names.index("cft")].config
    assert trial.init_from == cft.init_from and trial.loss == cft.loss and trial.data.eval_split == "val"

    result = pipeline.run(cfg, log=lambda _: None)
    assert set(result["evaluation"]) == {"base", "cft", "sweep"}
    done = json.loads((out / "sweep" / "stage.json").read_text())["result"]
    assert done["best"]["params"]["loss.lambda_align"] in (0.2, 0.8)
    assert (out / "sweep" / "best_model").is_dir()
    assert "CFT (best of sweep)" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="sweep"):  # the section is validated as a SweepConfig
        pipeline.prepare(load_config(PipelineConfig, _tiny(out), ["sweep.num_sampels=2"]))
