"""The calibrated CLIP test bed of the StarFT pipeline, run in one process (no Ray).

``workflows/configs/starft_pipeline.yaml`` renders a broad pretraining world and a biased
fine-tuning world, pretrains a tiny CLIP contrastively on the first and fine-tunes it on the
second. The benchmarks that measure a method on that test bed (``benchmarks/starft_effect.py``,
``benchmarks/seraser_effect.py``) read the pipeline's stage configs with :func:`recipe` and run
its stages with the real training code: :func:`stage_world` (a stage's world, shifted by the
run's seed), :func:`train_stage` (a finetune stage: its loss, train, ``run.select`` and caption
column), :func:`pretrained_model` (the ``pretrain`` stage on the ``pretrain_data`` world, kept in an
optional cache folder: a calibration that varies only later stages pretrains once per seed),
:func:`evaluate_clip` (zero-shot average and worst-group accuracy) and :func:`map_seeds` (seeds in
parallel processes).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from unspur.config import ClipModelConfig, PipelineConfig, SpuriousWorldConfig, TrainConfig
from unspur.config.base import apply_overrides, parse_overrides
from unspur.config.finetune import SpuriousCaptionConfig
from unspur.config.pipeline import resolve
from unspur.data.spuriousworld import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset
from unspur.losses import LOSSES, get_loss
from unspur.models.families import get_family
from unspur.training import evaluate, fit, seed_everything, selection_score

__all__ = [
    "STARFT_PIPELINE",
    "clip_dataset",
    "evaluate_clip",
    "fine_tuned_model",
    "map_seeds",
    "parse_seed_args",
    "pretrained_model",
    "recipe",
    "run_seeds",
    "stage_world",
    "starft_stage",
    "train_stage",
]

#: the StarFT pipeline: the test bed's recipe
STARFT_PIPELINE = Path(__file__).parents[1] / "workflows" / "configs" / "starft_pipeline.yaml"
FAMILY = get_family("clip")


def recipe(path: Path, overrides: Sequence[str], required: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The pipeline's stage configs by stage name (``<stage>.key=value`` overrides applied); exits
    with a message when a stage of ``required`` is missing."""
    raw = yaml.safe_load(Path(path).read_text())
    cfg = PipelineConfig.model_validate(apply_overrides(raw, parse_overrides(list(overrides))))
    stages = {s.name: s.config for s in cfg.stages}
    missing = set(required) - set(stages)
    if missing:
        raise SystemExit(f"{path} lacks the stages {sorted(missing)} this benchmark reads")
    return stages


def stage_world(stage: dict[str, Any], seed: int) -> SpuriousWorldConfig:
    """The stage's world with its ``seed`` shifted by the run's (seed 0 = the pipeline's world)."""
    world = stage["spuriousworld"]
    return SpuriousWorldConfig(**{**world, "seed": world.get("seed", 0) + seed})


def clip_dataset(df, model, cfg: ClipModelConfig, fields, caption: str = "caption", templates=None):
    """``df``'s rows as the clip family's training / evaluation items (the model's input norm)."""
    norm = model.pretrained_cfg
    return ImageMaskDataset(
        df,
        None,
        cfg.img_size,
        mean=norm["mean"],
        std=norm["std"],
        fields=fields,
        tokenizer=FAMILY.tokenizer(cfg),
        caption_column=caption,
        spurious_templates=templates,
    )


def evaluate_clip(model, df, cfg: ClipModelConfig) -> dict[str, Any]:
    """Zero-shot evaluation of ``model`` on ``df`` (``acc``, ``wga``, ``worst_group``, ...)."""
    loader = DataLoader(clip_dataset(df, model, cfg, ("image", "label")), batch_size=256)
    return evaluate(model, loader, family="clip")


def train_stage(model, df, cfg, stage, seed, *, teacher=None, templates=None, val=None) -> int | None:
    """Fit ``stage`` (its loss, train, run.select, data.caption_column) on ``df``; keeps the
    best val epoch's weights when ``run.select`` says so. Returns the kept epoch (None = last)."""
    loss_cfg = LOSSES.entry(stage["loss"]["name"]).config(**stage["loss"])
    spec = get_loss(loss_cfg.name)
    train = TrainConfig(**{**stage["train"], "seed": seed})
    select = stage.get("run", {}).get("select", "last")
    fields = tuple(k for k in spec.batch_keys if k != "label") + ("label",)
    caption = stage.get("data", {}).get("caption_column", "caption")
    ds = clip_dataset(df, model, cfg, fields, caption, templates)
    seed_everything(seed)
    loader = DataLoader(ds, batch_size=train.batch_size, shuffle=True, drop_last=True)
    best: dict[str, Any] = {}

    def keep_best(epoch: int, _terms: dict[str, float]) -> None:
        if select == "last":
            return
        score = selection_score(select, evaluate_clip(model, val, cfg))
        if not best or score > best["score"]:
            best.update(score=score, state=copy.deepcopy(model.state_dict()), epoch=epoch)

    fit(model, loader, spec, loss_cfg, train, base_model=teacher, on_epoch=keep_best, family="clip")
    if best:
        model.load_state_dict(best["state"])
    return best.get("epoch")


def starft_stage(stages: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[str]]:
    """The pipeline's ``starft`` stage resolved as the pipeline resolves it (``extends:
    ${flyp.config}``, ``replace: [loss]``), with the built-in spurious bank in place of the
    concepts stage's -> (stage config, its spurious template kinds)."""
    outputs = {"flyp": {"config": stages["flyp"]}, "concepts": {"bank": None}}
    starft = resolve(stages["starft"], outputs, "stage starft")
    spurious = SpuriousCaptionConfig(**starft.get("data", {}).get("spurious", {}))
    return starft, list(spurious.kinds)


def _cache_path(cache: Path | None, name: str, key: Sequence[Any], seed: int) -> Path | None:
    """Where a trained model of ``key`` (stage configs, classes, seed) is kept in ``cache``."""
    if cache is None:
        return None
    digest = hashlib.sha256(json.dumps(list(key), sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache) / f"{name}-seed{seed}-{digest[:16]}.pt"


def _keep(path: Path | None, obj: Any) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(obj, partial)
    partial.replace(path)  # atomic: parallel seeds never read a half-written file


def pretrained_model(
    stages: dict[str, dict[str, Any]], seed: int, classes: Sequence[str], cache: Path | None = None
) -> tuple[Any, ClipModelConfig]:
    """The ``pretrain`` stage trained on the ``pretrain_data`` world (both seed-shifted) -> (model,
    its config with ``classes``). With ``cache`` the trained weights are kept there, keyed by a hash
    of both stages' configs, the classes and the seed (training is deterministic per seed, so a hit
    gives the weights a new run would); a hit skips rendering and training."""
    cfg = ClipModelConfig(**{**stages["pretrain"]["model"], "classes": list(classes)})
    seed_everything(seed)
    model = FAMILY.build(cfg)
    path = _cache_path(
        cache, "pretrained", [stages["pretrain_data"], stages["pretrain"], list(classes), seed], seed
    )
    if path is not None and path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu"))
        return model, cfg
    images, _ = generate_tables(stage_world(stages["pretrain_data"], seed), splits=("train",))
    train_stage(model, images, cfg, stages["pretrain"], seed)
    _keep(path, model.state_dict())
    return model, cfg


def fine_tuned_model(
    model,
    cfg: ClipModelConfig,
    stages: dict[str, dict[str, Any]],
    stage: str,
    seed: int,
    train,
    val,
    cache: Path | None = None,
) -> int | None:
    """``model`` (the pretrained model of :func:`pretrained_model`) fitted in place by the ``stage``
    stage (e.g. ``flyp``) on ``train``, epochs chosen on ``val`` -> the kept epoch (None = last).
    With ``cache`` the weights and the epoch are kept there, keyed by the pretraining, the
    fine-tuning world and the stage's configs, the classes and the seed."""
    key = [
        stages["pretrain_data"],
        stages["pretrain"],
        stages["data"],
        stages[stage],
        list(cfg.classes),
        seed,
    ]
    path = _cache_path(cache, stage, key, seed)
    if path is not None and path.is_file():
        kept = torch.load(path, map_location="cpu")
        model.load_state_dict(kept["state"])
        return kept["epoch"]
    epoch = train_stage(model, train, cfg, stages[stage], seed, val=val)
    _keep(path, {"state": model.state_dict(), "epoch": epoch})
    return epoch


def map_seeds(fn: Callable[[Any], Any], jobs: Sequence[Any], workers: int) -> list[Any]:
    """``fn`` over ``jobs`` (one a seed): in this process, or in ``workers`` spawned processes
    (``fn`` must then be importable: a module-level function of the script or of unspur)."""
    if workers <= 1:
        return [fn(job) for job in jobs]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))


def _seed_job(job: tuple[Callable[..., Any], dict[str, dict[str, Any]], int, str, int, Path | None]) -> Any:
    fn, stages, seed, split, threads, cache = job
    torch.set_num_threads(threads)
    return fn(stages, seed, split, cache)


def run_seeds(
    fn: Callable[[dict[str, dict[str, Any]], int, str, Path | None], Any],
    stages: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> tuple[list[int], list[Any]]:
    """``fn(stages, seed, split, cache)`` for the seeds of :func:`parse_seed_args`'s ``args``, in
    ``args.workers`` processes with ``args.threads`` torch threads each -> (seeds, results)."""
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = [(fn, stages, s, args.split, args.threads, args.cache) for s in seeds]
    return seeds, map_seeds(_seed_job, jobs, args.workers)


def parse_seed_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None, overrides_help: str):
    """Parse the test bed's common options (``--seeds --first-seed --pipeline --split --threads
    --workers --cache`` and the overrides) after ``parser``'s own; sets torch's thread count."""
    parser.add_argument(
        "--seeds", type=int, default=1, help="seeds first..first+K-1; the last line averages them"
    )
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed")
    parser.add_argument("--pipeline", type=Path, default=STARFT_PIPELINE)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per seed")
    parser.add_argument("--workers", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="folder keeping trained models between runs (per recipe, seed)",
    )
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    torch.set_num_threads(args.threads)
    return args
