"""``unspur finetune``: train a classifier with erm / cft / robustvit, or a CLIP model with flyp /
starft, on Ray Train (V2).

Reads the image table and the masks table of ARCHITECTURE.md (an image's training mask is the
union of its concept masks; a SpuriousWorld parts table serves too), or renders SpuriousWorld
into ``<out>/data`` with the synth job (:func:`unspur.workflows.synth.job.render_tables`) when
``data.spuriousworld`` is given. ``build(cfg)`` returns the unexecuted
TorchTrainer (``run.num_workers`` DDP workers; ``use_gpu`` for GPUs); ``run(cfg)`` executes it,
or trains in this process when ``run.num_workers`` is 0. Every epoch ends in a checkpoint
(safetensors + resolved config + optimizer state); rerunning with the same ``run.name`` and
``run.storage_path`` resumes from the latest one. The final model lands in ``<out>/model``.

    unspur finetune --config workflows/configs/finetune_base.yaml --out runs/base
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unspur.config import ConfigError, FinetuneConfig
from unspur.data.adapters import DatasetError
from unspur.data.images import size_problems
from unspur.digest import config_digest
from unspur.models.families import FAMILIES
from unspur.relevance import RELEVANCE
from unspur.workflows.finetune.loop import SUMMARY, load_tables, run_loop, train_loop_per_worker
from unspur.workflows.finetune.sessions import LocalSession
from unspur.workflows.job import init_ray, main_for, user_errors
from unspur.workflows.synth.job import render_tables

__all__ = ["outputs", "CONFIG", "build", "check_images", "main", "prepare", "resolve", "run", "table_paths"]

CONFIG = FinetuneConfig


def resolve(cfg: FinetuneConfig) -> FinetuneConfig:
    """Make ``out``, ``storage_path`` and data paths absolute (workers may run elsewhere); check
    the model family, the relevance method and ``init_from``."""
    if cfg.model.family not in FAMILIES:
        raise ConfigError(f"unknown model.family {cfg.model.family!r}; registered: {', '.join(FAMILIES)}")
    if cfg.relevance not in RELEVANCE:
        raise ConfigError(f"unknown relevance method {cfg.relevance!r}; choose one of {sorted(RELEVANCE)}")
    if cfg.init_from and not Path(cfg.init_from).is_dir():
        raise ConfigError(
            f"init_from {cfg.init_from!r} is not a checkpoint folder; pass the <out>/model "
            "folder of an earlier finetune run"
        )
    out = Path(cfg.out).resolve()
    data = cfg.data.model_copy(
        update={
            "images": [str(Path(p).resolve()) for p in cfg.data.images] if cfg.data.images else None,
            "masks": str(Path(cfg.data.masks).resolve()) if cfg.data.masks else None,
            "spurious": cfg.data.spurious.model_copy(
                update={
                    "bank": str(Path(cfg.data.spurious.bank).resolve()) if cfg.data.spurious.bank else None
                }
            ),
        }
    )
    storage = Path(cfg.run.storage_path).resolve() if cfg.run.storage_path else out / "checkpoints"
    import torch  # train.num_threads 0: a Ray Train worker's CPUs, or this process's torch threads

    local = torch.get_num_threads()
    threads = cfg.train.num_threads or (
        max(1, int(cfg.run.cpus_per_worker)) if cfg.run.num_workers else local
    )
    return cfg.model_copy(
        update={
            "out": str(out),
            "data": data,
            "train": cfg.train.model_copy(update={"num_threads": threads}),
            "init_from": str(Path(cfg.init_from).resolve()) if cfg.init_from else None,
            "run": cfg.run.model_copy(update={"storage_path": str(storage)}),
        }
    )


def table_paths(cfg: FinetuneConfig) -> dict[str, Any]:
    """``{"images": [paths], "masks": path | None}``; for SpuriousWorld the cached render under
    ``<out>/data/spuriousworld-<config hash>/`` (rendered by :func:`run` if missing)."""
    if cfg.data.images:
        return {"images": list(cfg.data.images), "masks": cfg.data.masks}
    folder = Path(cfg.out) / "data" / f"spuriousworld-{config_digest(cfg.data.spuriousworld, 12)}"
    return {"images": [str(folder / "images.parquet")], "masks": str(folder / "parts.parquet")}


def _render_spuriousworld(cfg: FinetuneConfig, tables: dict[str, Any]) -> None:
    """Render the train and eval splits with the synth job's :func:`render_tables` (cached)."""
    splits = tuple(dict.fromkeys((cfg.data.train_split, cfg.data.eval_split)))
    render_tables(cfg.data.spuriousworld, Path(tables["images"][0]).parent, splits)


def check_images(cfg: FinetuneConfig, tables: dict[str, Any]) -> None:
    """Refuse (before Ray and before any model) an image table whose training or evaluation rows
    hold an image that cannot be read or whose size :func:`unspur.data.images.check_size` refuses;
    the message names up to five rows and what is allowed. Reads image headers only."""
    for key, path in [*(("data.images", p) for p in tables["images"]), ("data.masks", tables.get("masks"))]:
        if path and not Path(path).exists():
            raise DatasetError(f"{key}: {path} does not exist; set {key} to a Parquet file or folder")
    images, _ = load_tables({"images": tables["images"]})
    if "split" in images.columns:
        images = images[images["split"].isin({cfg.data.train_split, cfg.data.eval_split})]
    n_bad, shown = size_problems(images)
    if n_bad:
        raise DatasetError(
            f"{n_bad} of {len(images)} training/evaluation images in {', '.join(tables['images'])} "
            "cannot be used: " + "; ".join(shown) + (" ..." if n_bad > len(shown) else "")
        )


def prepare(cfg: FinetuneConfig) -> dict[str, Any]:
    """:func:`table_paths` of a resolved ``cfg``, rendering SpuriousWorld first if it is not cached,
    and checking the images of a given table (:func:`check_images`)."""
    tables = table_paths(cfg)
    if cfg.data.spuriousworld is not None:
        _render_spuriousworld(cfg, tables)
    else:
        check_images(cfg, tables)
    return tables


def build(cfg: FinetuneConfig, callbacks: list[Any] | None = None) -> Any:
    """The unexecuted Ray Train V2 TorchTrainer of this job (``run.num_workers`` >= 1).

    ``callbacks``: extra Ray Train callbacks (e.g. Tune's ``TuneReportCallback`` in a sweep trial).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = resolve(cfg)
    if cfg.run.num_workers < 1:
        raise ValueError(
            "run.num_workers=0 trains in-process without Ray Train; set run.num_workers >= 1 "
            "to build a TorchTrainer"
        )
    resources = {"CPU": cfg.run.cpus_per_worker, **({"GPU": 1} if cfg.run.use_gpu else {})}
    loop_config = {
        "cfg": cfg.model_dump(mode="json"),
        "tables": table_paths(cfg),
        "mlflow_tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.run.name,
            storage_path=cfg.run.storage_path,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.keep_checkpoints),
            callbacks=list(callbacks or []),
        ),
    )


def run(cfg: FinetuneConfig) -> dict[str, Any]:
    """Train (Ray Train, or in-process for ``num_workers`` 0); returns the run summary."""
    cfg = resolve(cfg)
    tables = prepare(cfg)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    if cfg.run.num_workers == 0:
        session = LocalSession(Path(cfg.run.storage_path) / cfg.run.name, cfg.run.keep_checkpoints)
        import torch

        threads = torch.get_num_threads()
        try:
            summary = run_loop(cfg, tables, session)
        finally:  # the next job of this process (a pipeline's next stage) starts from the same count
            torch.set_num_threads(threads)
    else:
        init_ray()
        result = _fit(build(cfg))
        summary = json.loads((Path(cfg.out) / SUMMARY).read_text())
        summary["ray_checkpoint"] = result.checkpoint.path if result.checkpoint else None
    return _brief(summary)


def _fit(trainer: Any) -> Any:
    """``trainer.fit()``; a worker's user error (bad checkpoint, NaN loss...) is re-raised as itself."""
    from ray.train import WorkerGroupError

    try:
        result = trainer.fit()
    except WorkerGroupError as err:
        for failure in err.worker_failures.values():
            if isinstance(failure, user_errors()):
                raise failure from err
        raise
    if result.error is not None:
        raise result.error
    return result


BRIEF_KEYS = (
    "checkpoint",
    "run_name",
    "start_epochs",
    "epochs_trained_this_run",
    "epochs",
    "select",
    "selected_epoch",
    "kept_start",
    "selection",
    "figure",
    "mlflow_run_id",
    "ray_checkpoint",
)


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    """The printed result: paths, epochs, and the headline metrics before and after."""
    keys = ("acc", "wga", "align_mass_in", "align_pointing")
    pick = lambda m: {k: m[k] for k in keys if m and k in m}  # noqa: E731
    return {
        **{k: summary.get(k) for k in BRIEF_KEYS if k in summary},
        "initial": pick(summary.get("initial")),
        "final": pick(summary.get("final")),
        "train_last": summary["history"][-1].get("train") if summary.get("history") else None,
    }


def main(argv: list[str] | None = None) -> int:
    """``unspur finetune --config FILE --out DIR [--address A] key.sub=value ...``."""
    return main_for("finetune", FinetuneConfig, run, argv, needs_ray=False)


def outputs(cfg: FinetuneConfig) -> dict[str, Any]:
    """What a pipeline stage of this job offers later stages: ``model`` (the kept weights)."""
    return {"model": str(Path(cfg.out).resolve() / "model")}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
