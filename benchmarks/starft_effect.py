"""Does StarFT keep a CLIP model off SpuriousWorld's shortcut? zero-shot vs FLYP vs WiSE-FT vs StarFT.

The recipe is the StarFT pipeline's (``workflows/configs/starft_pipeline.yaml``, what ``unspur
demo starft`` runs): per seed, render the balanced lower-fidelity pretraining world and the biased
fine-tuning world (their ``seed`` plus the run's seed: seed 0 renders the pipeline's worlds), pretrain a tiny CLIP contrastively on the
first (the zero-shot model), then from it (a) FLYP and (b) StarFT on the biased train split, with
the same optimisation and ``run.select`` (chosen on the val split); (c) WiSE-FT = the weight-space
average of the zero-shot and FLYP models (alpha 0.5). Every model is evaluated zero-shot on the
balanced eval split (test by default): average and worst-group accuracy. Everything runs in this
process with the real training code (``unspur.training``), no Ray. StarFT's spurious captions are
the built-in bank's templates (what the pipeline's WordNet concepts stage writes). Last line,
means over seeds:

    acc_zs=.. wga_zs=.. acc_flyp=.. wga_flyp=.. acc_wise=.. wga_wise=.. acc_starft=.. wga_starft=..

Overrides address the pipeline's stages (``<stage>.<key>=<value>``):

    python benchmarks/starft_effect.py --seeds 3
    python benchmarks/starft_effect.py --seeds 1 --split val starft.loss.lam=10 flyp.train.lr=3e-5
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader

from unspur.config import ClipModelConfig, PipelineConfig, SpuriousWorldConfig, TrainConfig
from unspur.config.base import apply_overrides, parse_overrides
from unspur.data.spuriousworld import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset
from unspur.losses import LOSSES, get_loss
from unspur.models.families import get_family
from unspur.models.wise import wise_ft
from unspur.spurious_templates import run_templates
from unspur.training import evaluate, fit, seed_everything, selection_score

PIPELINE = Path(__file__).parents[1] / "workflows" / "configs" / "starft_pipeline.yaml"
MODELS = ("zs", "flyp", "wise", "starft")
KEYS = tuple(f"{m}_{name}" for name in MODELS for m in ("acc", "wga"))
FAMILY = get_family("clip")


def recipe(path: Path, overrides: list[str]) -> dict[str, dict[str, Any]]:
    """The pipeline's stage configs by stage name (``<stage>.key=value`` overrides applied)."""
    raw = yaml.safe_load(path.read_text())
    cfg = PipelineConfig.model_validate(apply_overrides(raw, parse_overrides(overrides)))
    stages = {s.name: s.config for s in cfg.stages}
    missing = {"pretrain_data", "data", "pretrain", "flyp", "starft"} - set(stages)
    if missing:
        raise SystemExit(f"{path} lacks the stages {sorted(missing)} this benchmark reads")
    return stages


def _world(stage: dict[str, Any], seed: int) -> SpuriousWorldConfig:
    """The stage's world with its ``seed`` shifted by the run's (seed 0 = the pipeline's world)."""
    world = stage["spuriousworld"]
    return SpuriousWorldConfig(**{**world, "seed": world.get("seed", 0) + seed})


def _dataset(df, model, cfg: ClipModelConfig, fields, caption: str = "caption", templates=None):
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


def _evaluate(model, df, cfg: ClipModelConfig) -> dict[str, Any]:
    loader = DataLoader(_dataset(df, model, cfg, ("image", "label")), batch_size=256)
    return evaluate(model, loader, family="clip")


def _train(model, df, cfg, stage, seed, *, teacher=None, templates=None, val=None) -> int | None:
    """Fit ``stage`` (its loss, train, run.select, data.caption_column) on ``df``; keeps the
    best val epoch's weights when ``run.select`` says so. Returns the kept epoch (None = last)."""
    loss_cfg = LOSSES.entry(stage["loss"]["name"]).config(**stage["loss"])
    spec = get_loss(loss_cfg.name)
    train = TrainConfig(**{**stage["train"], "seed": seed})
    select = stage.get("run", {}).get("select", "last")
    fields = tuple(k for k in spec.batch_keys if k != "label") + ("label",)
    caption = stage.get("data", {}).get("caption_column", "caption")
    ds = _dataset(df, model, cfg, fields, caption, templates)
    seed_everything(seed)
    loader = DataLoader(ds, batch_size=train.batch_size, shuffle=True, drop_last=True)
    best: dict[str, Any] = {}

    def keep_best(epoch: int, _terms: dict[str, float]) -> None:
        if select == "last":
            return
        score = selection_score(select, _evaluate(model, val, cfg))
        if not best or score > best["score"]:
            best.update(score=score, state=copy.deepcopy(model.state_dict()), epoch=epoch)

    fit(model, loader, spec, loss_cfg, train, base_model=teacher, on_epoch=keep_best, family="clip")
    if best:
        model.load_state_dict(best["state"])
    return best.get("epoch")


def run_seed(stages: dict[str, dict[str, Any]], seed: int, split: str) -> dict[str, Any]:
    """One seed: pretrain, FLYP, WiSE-FT, StarFT -> the eight numbers of the last line (+ timings)."""
    t0 = time.perf_counter()
    pre_world = _world(stages["pretrain_data"], seed)
    world = _world(stages["data"], seed)
    cfg = ClipModelConfig(**{**stages["pretrain"]["model"], "classes": list(world.classes)})
    pre_images, _ = generate_tables(pre_world, splits=("train",))
    images, _ = generate_tables(world, splits=tuple(dict.fromkeys(("train", "val", split))))
    train, val, test = (images[images["split"] == s] for s in ("train", "val", split))
    seed_everything(seed)
    model = FAMILY.build(cfg)
    _train(model, pre_images, cfg, stages["pretrain"], seed)
    t_pre = time.perf_counter() - t0
    zero_shot = copy.deepcopy(model.state_dict())
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    out: dict[str, Any] = {}
    ev = {"zs": _evaluate(model, test, cfg)}
    out["epoch_flyp"] = _train(model, train, cfg, stages["flyp"], seed, val=val)
    ev["flyp"] = _evaluate(model, test, cfg)
    wise = copy.deepcopy(model)
    wise.load_state_dict(wise_ft(zero_shot, model.state_dict(), alpha=0.5))
    ev["wise"] = _evaluate(wise, test, cfg)
    starft = apply_overrides(stages["flyp"], {k: v for k, v in stages["starft"].items() if k != "loss"})
    starft["loss"] = stages["starft"]["loss"]
    kinds = starft.get("data", {}).get("spurious", {}).get("kinds", ["background", "texture", "resolution"])
    model.load_state_dict(zero_shot)
    t1 = time.perf_counter()
    out["epoch_starft"] = _train(
        model, train, cfg, starft, seed, teacher=teacher, templates=run_templates(None, kinds), val=val
    )
    ev["starft"] = _evaluate(model, test, cfg)
    for name, r in ev.items():
        out.update({f"acc_{name}": r["acc"], f"wga_{name}": r["wga"], f"worst_{name}": r["worst_group"]})
    out.update(t_pre=t_pre, t_starft=time.perf_counter() - t1, t_total=time.perf_counter() - t0)
    return out


def _run_seed(job: tuple[dict[str, dict[str, Any]], int, str, int]) -> dict[str, Any]:
    """:func:`run_seed` in a worker process (``--workers``), with its own torch thread count."""
    stages, seed, split, threads = job
    torch.set_num_threads(threads)
    return run_seed(stages, seed, split)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..K-1; the last line averages them")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first..first+K-1")
    parser.add_argument("--pipeline", type=Path, default=PIPELINE)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--threads", type=int, default=2, help="torch threads per seed")
    parser.add_argument("--workers", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("overrides", nargs="*", help="STAGE.KEY=VALUE (e.g. starft.loss.lam=10)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    torch.set_num_threads(args.threads)
    stages = recipe(args.pipeline, args.overrides)
    if args.split == "val" and any(
        stages[s].get("run", {}).get("select", "last") != "last" for s in ("flyp",)
    ):
        raise SystemExit("run.select chooses epochs on the val split; evaluate on --split test")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    if args.workers > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            results = list(pool.map(_run_seed, [(stages, s, args.split, args.threads) for s in seeds]))
    else:
        results = [run_seed(stages, s, args.split) for s in seeds]
    rows = []
    for seed, r in zip(seeds, results, strict=True):
        rows.append(r)
        print(
            f"seed={seed} "
            + " ".join(f"{k}={r[k]:.3f}" for k in KEYS)
            + f" worst_flyp={r['worst_flyp']} worst_starft={r['worst_starft']}"
            + f" epoch_flyp={r['epoch_flyp']} epoch_starft={r['epoch_starft']}"
            + f" t_pre={r['t_pre']:.0f}s t_starft={r['t_starft']:.0f}s t_total={r['t_total']:.0f}s",
            flush=True,
        )
    means = {k: statistics.fmean(r[k] for r in rows) for k in KEYS}
    if args.seeds > 1:
        print("std " + " ".join(f"{k}={statistics.stdev(r[k] for r in rows):.3f}" for k in KEYS))
    print(" ".join(f"{k}={means[k]:.3f}" for k in KEYS))
    return means


if __name__ == "__main__":
    main()
