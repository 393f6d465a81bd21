"""``unspur run``: the whole CFT flow from one YAML, each stage reused when already done.

    data (SpuriousWorld render or an existing table) -> concepts -> masks (+ validation)
    -> base (ERM on the biased train split) -> cft (few-shot, from base) [+ control: ERM on the
    very same few images] [+ sweep: Ray Tune over cft's loss weights, best model kept]
    -> evaluate every model on the held-out split -> report.md

Every stage writes into ``<out>/<stage>`` and finishes by writing ``stage.json`` (a digest of
its config and of every stage before it, and its result). A rerun skips a stage whose
``stage.json`` matches that digest (a changed stage clears its stale output and reruns, and so
does everything after it), so a
pipeline that failed half way resumes from the last finished stage (and the stages themselves
resume: masks skip written image ids, finetune restarts from its last checkpoint). MLflow: one
parent run, a child run per stage (the stage jobs' own runs nest below it), in
``MLFLOW_TRACKING_URI`` or ``sqlite:///<out>/mlflow.db``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from unspur import tracking
from unspur.config import (
    ConceptsConfig,
    ConfigError,
    EvaluateConfig,
    FinetuneConfig,
    MasksConfig,
    PipelineConfig,
    SweepConfig,
    SynthConfig,
    apply_overrides,
    validate_config,
)
from unspur.digest import config_digest
from unspur.io import write_json_atomic
from workflows.job import main_for
from workflows.pipeline.report import print_table, write_report

__all__ = ["CONFIG", "DEMO_CONFIG", "MODELS", "Stage", "build", "main", "prepare", "run"]

CONFIG = PipelineConfig
MODELS = ("base", "cft", "control", "sweep")
STAGE_FILE = "stage.json"
#: the embedded defaults of ``unspur demo`` (SpuriousWorld, WordNet concepts, ground-truth masks)
DEMO_CONFIG = Path(__file__).parents[1] / "configs" / "cft_pipeline.yaml"


@dataclass
class Stage:
    """One step of the pipeline: its validated config and the job function that runs it."""

    name: str
    config: BaseModel
    job: Callable[[Any], dict[str, Any]]
    upstream: str = ""  # digest of the stages before this one: a rerun upstream reruns this too

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def digest(self) -> str:
        return config_digest(self.config, 16, salt=self.upstream)


def _stage_config(
    model: type[BaseModel], wired: dict[str, Any], user: dict[str, Any], name: str
) -> BaseModel:
    """The pipeline's wiring, then the user's section on top, validated strictly."""
    return validate_config(model, apply_overrides(wired, user), f"pipeline section {name!r}")


def _job(module: str) -> Callable[[Any], dict[str, Any]]:
    def call(stage_cfg: Any) -> dict[str, Any]:
        import importlib

        return importlib.import_module(f"workflows.{module}").run(stage_cfg)

    return call


def _sweep_job(cfg: SweepConfig) -> dict[str, Any]:
    """Run the sweep, then copy the model of its best trial that trained to the end (the sweep's
    ``best_finished``) to ``<out>/best_model`` for evaluation."""
    from workflows.sweep import job as sweep

    summary = sweep.run(cfg)
    best = summary.get("best_finished")
    if best is None:
        raise ConfigError(
            f"sweep {cfg.out}: no trial trained to the end (see {cfg.out}/trials.csv); rerun "
            "the pipeline to resume the sweep, or give the trials more epochs before a scheduler "
            "may stop them"
        )
    target = Path(cfg.out) / "best_model"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(Path(cfg.out) / "trials" / best["trial_id"] / "model", target)
    return {"best": best, "best_overall": summary.get("best"), "best_model": str(target)}


def _sweep_stage(cfg: PipelineConfig, cft: FinetuneConfig, out: Path) -> Stage:
    """The optional sweep: every trial is the cft stage's config with one point of the space applied."""
    trial = cft.model_dump(mode="json")
    trial["run"].update(figure_images=0, eval_every=1)  # the scheduler ranks every epoch's metric
    wired = {"out": str(out / "sweep"), "finetune": trial, "base": None}
    return Stage("sweep", _stage_config(SweepConfig, wired, cfg.sweep or {}, "sweep"), _sweep_job)


def _data_inputs(cfg: PipelineConfig, out: Path) -> tuple[list[Stage], str, str | None, list[str] | None]:
    """The data stage (if SpuriousWorld is rendered) and the image table / parts table / classes."""
    sw = cfg.data.spuriousworld
    if sw is None:
        for key in ("images", "parts"):
            value = getattr(cfg.data, key)
            if value is not None and "://" not in value and not Path(value).exists():
                raise ConfigError(
                    f"pipeline: data.{key} {value!r} does not exist; point it at an existing "
                    "Parquet table (file or folder of shards)"
                )
        parts = str(Path(cfg.data.parts).resolve()) if cfg.data.parts else None
        return [], str(Path(cfg.data.images).resolve()), parts, None
    data_dir = out / "data"
    synth = SynthConfig(out=str(data_dir), kind="spuriousworld", spuriousworld=sw)
    return (
        [Stage("data", synth, _job("synth"))],
        str(data_dir / "images"),
        str(data_dir / "parts"),
        list(sw.classes),
    )


def _finetune_wiring(out: Path, name: str, images: str, masks: str | None, n_classes: int | None) -> dict:
    wired: dict[str, Any] = {
        "out": str(out / name),
        "data": {"images": [images], "spuriousworld": None, "masks": masks, "eval_split": "val"},
        "run": {"name": name},
    }
    if n_classes is not None:
        wired["model"] = {"num_classes": n_classes}
    return wired


def prepare(cfg: PipelineConfig) -> list[Stage]:
    """Every stage with its validated config, in order; raises ConfigError before any compute."""
    out = Path(cfg.out).resolve()
    stages, images, parts, classes = _data_inputs(cfg, out)
    n_classes = len(classes) if classes else None
    class_source = {"source": "names", "names": classes} if classes else {"source": "table", "path": images}
    concepts = _stage_config(
        ConceptsConfig, {"out": str(out / "concepts"), "classes": class_source}, cfg.concepts, "concepts"
    )
    segmenter = {"name": "ground_truth", "ground_truth": {"parts": parts}} if parts else {}
    masks = _stage_config(
        MasksConfig,
        {
            "out": str(out / "masks"),
            "images": images,
            "bank": str(out / "concepts" / "concept_bank.json"),
            "splits": ["train"],
            "segmenter": segmenter,
        },
        cfg.masks,
        "masks",
    )
    masks_table = str(out / "masks" / "masks")
    base = _stage_config(
        FinetuneConfig,
        apply_overrides(_finetune_wiring(out, "base", images, None, n_classes), {"loss": {"name": "erm"}}),
        cfg.base,
        "base",
    )
    cft_wiring = apply_overrides(
        _finetune_wiring(out, "cft", images, masks_table, n_classes),
        {
            "init_from": str(out / "base" / "model"),
            "fewshot": {"enabled": True},
            "model": base.model.model_dump(),
        },
    )
    cft = _stage_config(FinetuneConfig, cft_wiring, cfg.cft, "cft")
    if base.loss.name != "erm" or cft.loss.name == "erm":
        raise ConfigError(
            f"pipeline: base must use loss erm and cft an alignment loss; got base "
            f"{base.loss.name!r}, cft {cft.loss.name!r}"
        )
    stages += [
        Stage("concepts", concepts, _job("concepts")),
        Stage("masks", masks, _job("masks")),
        Stage("base", base, _job("finetune")),
        Stage("cft", cft, _job("finetune")),
    ]
    if cfg.run_control:  # the honest control: ERM from the same base on the very same few images
        control = cft.model_copy(
            update={
                "out": str(out / "control"),
                "loss": cft.loss.model_copy(update={"name": "erm"}),
                "run": cft.run.model_copy(update={"name": "control"}),
            }
        )
        stages.append(
            Stage(
                "control", validate_config(FinetuneConfig, control.model_dump(), "control"), _job("finetune")
            )
        )
    if cfg.sweep is not None:
        stages.append(_sweep_stage(cfg, cft, out))
    for name in [s.name for s in stages if s.name in MODELS]:
        ev = cfg.evaluate
        model = out / name / ("best_model" if name == "sweep" else "model")
        stages.append(
            Stage(
                f"evaluate_{name}",
                EvaluateConfig(
                    out=str(out / "evaluate" / name),
                    checkpoint=str(model),
                    images=images,
                    masks=parts,
                    split=ev.split,
                    batch_size=ev.batch_size,
                    relevance=ev.relevance,
                    num_actors=ev.num_actors,
                    num_cpus=ev.num_cpus,
                    num_gpus=ev.num_gpus,
                ),
                _job("evaluate"),
            )
        )
    return stages


def build(cfg: PipelineConfig) -> list[Stage]:
    """The unexecuted pipeline: every stage with its validated config (nothing runs, no Ray)."""
    return prepare(cfg)


def _done(stage: Stage) -> dict[str, Any] | None:
    marker = stage.out / STAGE_FILE
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    return record["result"] if record.get("digest") == stage.digest() else None


def _mark_done(stage: Stage, result: dict[str, Any], seconds: float) -> None:
    stage.out.mkdir(parents=True, exist_ok=True)
    record = {"digest": stage.digest(), "seconds": round(seconds, 1), "result": result}
    write_json_atomic(record, stage.out / STAGE_FILE, indent=2, default=str)


def _execute(stage: Stage, reuse: bool, log: Callable[[str], None]) -> tuple[dict[str, Any], bool]:
    """Run one stage in its own MLflow child run, or reuse its finished output."""
    previous = _done(stage) if reuse else None
    if previous is not None:
        log(f"[stage] {stage.name}: reusing {stage.out} (finished earlier with this config)")
        return previous, True
    if (stage.out / STAGE_FILE).is_file():  # finished under another config: its outputs are stale
        log(f"[stage] {stage.name}: config changed, clearing {stage.out}")
        shutil.rmtree(stage.out)
    log(f"[stage] {stage.name}: running -> {stage.out}")
    start = time.perf_counter()
    with tracking.start_run(stage.out, "pipeline", run_name=stage.name):
        tracking.log_config(stage.config)
        result = stage.job(stage.config)
        seconds = time.perf_counter() - start
        tracking.log_metrics({"stage_seconds": seconds})
    _mark_done(stage, result, seconds)
    log(f"[stage] {stage.name}: done in {seconds:.0f} s")
    return result, False


def run(cfg: PipelineConfig, stages: list[Stage] | None = None, log: Callable[[str], None] = print) -> dict:
    """Run (or reuse) every stage, then print the comparison table and write report.md."""
    stages = stages if stages is not None else prepare(cfg)
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tracking.scoped_tracking_uri(tracking.tracking_uri(out)):
        return _run(cfg, stages, out, log)


def _run(cfg: PipelineConfig, stages: list[Stage], out: Path, log: Callable[[str], None]) -> dict:
    results: dict[str, dict[str, Any]] = {}
    reused: list[str] = []
    with tracking.start_run(out, cfg.experiment, run_name="pipeline") as parent:
        tracking.log_config(cfg)
        upstream = ""
        for stage in stages:
            stage.upstream = upstream
            upstream = stage.digest()
            results[stage.name], was_reused = _execute(stage, cfg.reuse, log)
            if was_reused:
                reused.append(stage.name)
        evaluations = {m: results[f"evaluate_{m}"] for m in MODELS if f"evaluate_{m}" in results}
        tracking.log_metrics(
            {
                f"{m}.{k}": v
                for m, r in evaluations.items()
                for k, v in r.items()
                if k in ("acc", "wga", "align_mass_in", "align_pointing")
            }
        )
        report = write_report(out, cfg, results, evaluations)
        tracking.log_artifact(report)
        parent_id = parent.info.run_id
    print_table(evaluations, cfg.evaluate.split)
    return {
        "out": str(out),
        "report": str(report),
        "mlflow_run_id": parent_id,
        "reused_stages": reused,
        "evaluation": {
            m: {k: r.get(k) for k in ("acc", "wga", "align_mass_in")} for m, r in evaluations.items()
        },
    }


def _ready(cfg: PipelineConfig) -> None:
    """Validate every stage, and point MLflow at ``<out>/mlflow.db`` unless MLFLOW_TRACKING_URI is
    set, before Ray starts (its workers inherit the environment)."""
    prepare(cfg)
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking.tracking_uri(Path(cfg.out).resolve()))


def _show(result: dict[str, Any]) -> None:
    print(json.dumps(result, indent=2, default=str))
    print(f"Report: {result['report']}\nOpen the tracked runs (MLflow): unspur ui --out {result['out']}")


def main(argv: list[str] | None = None, defaults: str | Path | None = None) -> int:
    """``unspur run --config FILE --out DIR [key.sub=value ...]``; validates every stage first.

    ``defaults``: the YAML used without ``--config`` (``unspur demo`` passes :data:`DEMO_CONFIG`).
    """
    return main_for("run", PipelineConfig, run, argv, defaults=defaults, check=_ready, show=_show)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
