"""``unspur run``: a pipeline from one YAML stage list, each stage reused when already done.

A pipeline YAML lists named stages; each names its job (:data:`JOBS`), holds keys of that job's
config and refers to earlier stages' outputs (``${data.images}``, ``${base.model}``), see
:mod:`unspur.config.pipeline`. After the stages, every model of ``evaluate.models`` is evaluated on
the held-out split (stages ``evaluate_<model>``), the comparison table is printed and
``report.md`` written. ``workflows/configs/cft_pipeline.yaml`` is the CFT flow (``unspur demo``):

    data (SpuriousWorld) -> concepts -> masks (+ validation) -> base (ERM, biased split)
    -> cft (few-shot, from base) [+ control: ERM on the very same few images]
    [+ sweep: Ray Tune over cft's loss weights, best model kept] -> evaluate -> report.md

``workflows/configs/seraser_pipeline.yaml`` is SEraser's (``unspur demo seraser``):

    data -> concepts -> masks (held-out splits) -> model (FLYP CLIP) -> adapt (test-time prompt
    tuning on the test split) -> evaluate (zero-shot model vs adapt's tuned predictions) -> report.md

A model of ``evaluate.models`` is a stage that trains one (evaluated here) or a stage that writes
predictions of ``evaluate.split`` itself (``adapt``: its result's ``evaluation`` is used).

Every stage writes into ``<out>/<stage>`` and finishes by writing ``stage.json`` (a digest of
its config and of every stage before it, and its result). A rerun skips a stage whose
``stage.json`` matches that digest (a changed stage clears its stale output and reruns, and so
does everything after it), so a pipeline that failed half way resumes from the last finished
stage (and the stages themselves resume: masks skip written image ids, finetune restarts from
its last checkpoint). MLflow: one parent run, a child run per stage (the stage jobs' own runs
nest below it), in ``MLFLOW_TRACKING_URI`` or ``sqlite:///<out>/mlflow.db``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel

import unspur.actors.proposers  # noqa: F401  (registers the concept backends the stage configs name)
import unspur.actors.segmenters  # noqa: F401  (registers the segmenters the stage configs name)
from unspur import tracking
from unspur.config import ConfigError, validate_config
from unspur.config.pipeline import PipelineConfig, references, resolve
from unspur.digest import config_digest
from unspur.io import write_json_atomic
from unspur.workflows.job import main_for
from unspur.workflows.pipeline.report import print_table, write_report

__all__ = ["CONFIG", "DEMO_CONFIG", "DEMO_CONFIGS", "JOBS", "Stage", "build", "main", "prepare", "run"]

CONFIG = PipelineConfig
STAGE_FILE = "stage.json"
#: ``unspur demo <method>``: every shipped ``configs/<method>_pipeline.yaml`` (a method's demo is a file)
DEMO_CONFIGS: dict[str, Path] = {
    p.name.removesuffix("_pipeline.yaml"): p
    for p in sorted((Path(__file__).parents[1] / "configs").glob("*_pipeline.yaml"))
}
#: the embedded defaults of plain ``unspur demo`` (CFT: SpuriousWorld, WordNet concepts, ground-truth masks)
DEMO_CONFIG = DEMO_CONFIGS["cft"]
#: a stage's ``job`` -> the job module: its ``CONFIG``, ``run(cfg)`` and ``outputs(cfg)``.
JOBS: dict[str, str] = {
    "synth": "unspur.workflows.synth.job",
    "concepts": "unspur.workflows.concepts.job",
    "masks": "unspur.workflows.masks.job",
    "finetune": "unspur.workflows.finetune.job",
    "sweep": "unspur.workflows.sweep.job",
    "evaluate": "unspur.workflows.evaluate.job",
    "adapt": "unspur.workflows.adapt.job",
    "regions": "unspur.workflows.regions.job",
    "discover": "unspur.workflows.discover.job",
}


@dataclass
class Stage:
    """One step of the pipeline: its validated config and the job function that runs it."""

    name: str
    config: BaseModel
    job: Callable[[Any], dict[str, Any]]
    upstream: str = ""  # digest of the stages before this one: a rerun upstream reruns this too
    needs: tuple[str, ...] = ()  # outputs of this stage that later stages read: checked after it runs
    outputs: dict[str, Any] | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def digest(self) -> str:
        return config_digest(self.config, 16, salt=self.upstream)


def _module(job: str, where: str) -> ModuleType:
    if job not in JOBS:
        raise ConfigError(f"{where}: unknown job {job!r}; jobs are {sorted(JOBS)}")
    return importlib.import_module(JOBS[job])


def _stage(name: str, module: ModuleType, data: dict[str, Any], where: str) -> Stage:
    config = validate_config(module.CONFIG, data, where)
    return Stage(name, config, module.run, outputs={"config": _without_out(config), **module.outputs(config)})


def _without_out(config: BaseModel) -> dict[str, Any]:
    dumped = config.model_dump(mode="json")
    dumped.pop("out", None)  # a stage that extends another writes into its own folder
    return dumped


def prepare(cfg: PipelineConfig) -> list[Stage]:
    """Every enabled stage with its validated config, in order, then one evaluation per model;
    raises ConfigError naming the stage and key before any compute."""
    out = Path(cfg.out).resolve()
    outputs: dict[str, dict[str, Any]] = {}
    stages: list[Stage] = []
    disabled: list[str] = []
    for spec in cfg.stages:
        where = f"pipeline stage {spec.name!r} (job {spec.job})"
        module = _module(spec.job, where)
        try:
            data = resolve(spec.config, outputs, where)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: config must be a mapping of the job's keys")
        stage = _stage(spec.name, module, {**data, "out": str(out / spec.name)}, where)
        outputs[spec.name] = stage.outputs or {}
        off = sorted({r.split(".")[0] for r in references(spec.config)} & set(disabled))
        if spec.enabled and off:
            raise ConfigError(f"{where}: reads the output of disabled stage(s) {off}; enable them or drop it")
        if spec.enabled:
            stages.append(stage)
        else:
            disabled.append(spec.name)
    stages += _evaluations(cfg, out, outputs, disabled)
    _mark_needs(cfg, stages)
    return stages


def _evaluations(
    cfg: PipelineConfig, out: Path, outputs: dict[str, dict[str, Any]], disabled: list[str]
) -> list[Stage]:
    ev = cfg.evaluate
    module = _module("evaluate", "pipeline evaluate")
    stages = []
    for name in ev.models:
        if name in disabled:
            continue
        where = f"pipeline evaluate of {name!r}"
        if "model" not in outputs[name] and "predictions" in outputs[name]:
            _check_split(name, outputs[name], ev.split, where)
            continue  # a predicting stage (adapt): its own result holds the evaluation
        if "model" not in outputs[name]:
            raise ConfigError(
                f"{where}: stage {name!r} trains no model and writes no predictions "
                f"(its outputs: {sorted(outputs[name])})"
            )
        try:
            images, masks = resolve([ev.images, ev.masks], outputs, where)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        data = ev.model_dump(exclude={"models", "images", "masks"})
        data.update(
            out=str(out / "evaluate" / name), checkpoint=outputs[name]["model"], images=images, masks=masks
        )
        stages.append(_stage(f"evaluate_{name}", module, data, where))
    return stages


def _check_split(name: str, outputs: dict[str, Any], split: str, where: str) -> None:
    """A predicting stage is compared with the evaluated models: it must predict the same split."""
    own = outputs["config"].get("split")
    if own != split:
        raise ConfigError(
            f"{where}: stage {name!r} predicts split {own!r} but evaluate.split is {split!r}; "
            "set both to the same split"
        )


def _mark_needs(cfg: PipelineConfig, stages: list[Stage]) -> None:
    """Record on each stage which of its outputs later stages read (checked once it has run)."""
    refs = [r for spec in cfg.stages if spec.enabled for r in references(spec.config)]
    refs += [f"{m}.model" for m in cfg.evaluate.models]
    for stage in stages:
        stage.needs = tuple(sorted({r.split(".")[1] for r in refs if r.split(".")[0] == stage.name}))


def _done(stage: Stage) -> dict[str, Any] | None:
    marker = stage.out / STAGE_FILE
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text())
    return record["result"] if record.get("digest") == stage.digest() else None


def _mark_done(stage: Stage, result: dict[str, Any], seconds: float) -> None:
    record = {"digest": stage.digest(), "seconds": round(seconds, 1), "result": result}
    write_json_atomic(record, stage.out / STAGE_FILE, indent=2, default=str)


def _check_needs(stage: Stage) -> None:
    """A stage that finished without an output a later stage reads fails here, by name."""
    for key in stage.needs:
        value = (stage.outputs or {}).get(key)
        if isinstance(value, str) and value.startswith(str(stage.out)) and not Path(value).exists():
            raise ConfigError(
                f"pipeline stage {stage.name!r} finished without its output {key!r} ({value}), which a "
                f"later stage reads; see {stage.out} (a sweep interrupted before its trials "
                "ended has no best model yet: rerun to resume it)"
            )


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
    _check_needs(stage)
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
        evaluations = {m: r for m in cfg.evaluate.models if (r := _evaluation(results, m)) is not None}
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
    print_table(cfg, evaluations)
    return {
        "out": str(out),
        "report": str(report),
        "mlflow_run_id": parent_id,
        "reused_stages": reused,
        "evaluation": {
            m: {k: r.get(k) for k in ("acc", "wga", "align_mass_in")} for m, r in evaluations.items()
        },
    }


def _evaluation(results: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    """Model ``name``'s held-out metrics: its evaluate stage's, or a predicting stage's own."""
    if f"evaluate_{name}" in results:
        return results[f"evaluate_{name}"]
    return (results.get(name) or {}).get("evaluation")


def build(cfg: PipelineConfig) -> list[Stage]:
    """The unexecuted pipeline: every stage with its validated config (nothing runs, no Ray)."""
    return prepare(cfg)


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
