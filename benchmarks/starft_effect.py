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
import statistics
import time
from pathlib import Path
from typing import Any

from unspur.clip_testbed import evaluate_clip as _evaluate
from unspur.clip_testbed import (
    fine_tuned_model,
    parse_seed_args,
    pretrained_model,
    recipe,
    run_seeds,
    starft_stage,
)
from unspur.clip_testbed import stage_world as _world
from unspur.clip_testbed import train_stage as _train
from unspur.data.spuriousworld import generate_tables
from unspur.models.families import get_family
from unspur.models.wise import wise_ft
from unspur.spurious_templates import run_templates

MODELS = ("zs", "flyp", "wise", "starft")
KEYS = tuple(f"{m}_{name}" for name in MODELS for m in ("acc", "wga"))
FAMILY = get_family("clip")


def run_seed(
    stages: dict[str, dict[str, Any]], seed: int, split: str, cache: Path | None = None
) -> dict[str, Any]:
    """One seed: pretrain and FLYP (or read them from ``cache``), WiSE-FT, StarFT -> the eight numbers
    of the last line (+ timings)."""
    t0 = time.perf_counter()
    world = _world(stages["data"], seed)
    images, _ = generate_tables(world, splits=tuple(dict.fromkeys(("train", "val", split))))
    train, val, test = (images[images["split"] == s] for s in ("train", "val", split))
    model, cfg = pretrained_model(stages, seed, world.classes, cache)
    t_pre = time.perf_counter() - t0
    zero_shot = copy.deepcopy(model.state_dict())
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    out: dict[str, Any] = {}
    ev = {"zs": _evaluate(model, test, cfg)}
    out["epoch_flyp"] = fine_tuned_model(model, cfg, stages, "flyp", seed, train, val, cache)
    ev["flyp"] = _evaluate(model, test, cfg)
    wise = copy.deepcopy(model)
    wise.load_state_dict(wise_ft(zero_shot, model.state_dict(), alpha=0.5))
    ev["wise"] = _evaluate(wise, test, cfg)
    starft, kinds = starft_stage(stages)
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


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = parse_seed_args(parser, argv, "STAGE.KEY=VALUE (e.g. starft.loss.lam=10)")
    stages = recipe(args.pipeline, args.overrides, ("pretrain_data", "data", "pretrain", "flyp", "starft"))
    if args.split == "val" and any(
        stages[s].get("run", {}).get("select", "last") != "last" for s in ("flyp",)
    ):
        raise SystemExit("run.select chooses epochs on the val split; evaluate on --split test")
    seeds, results = run_seeds(run_seed, stages, args)
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
