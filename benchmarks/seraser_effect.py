"""Does SEraser keep a CLIP model off SpuriousWorld's shortcut? zero-shot head vs SEraser's tuned prompt.

The test bed is the StarFT pipeline's (``workflows/configs/starft_pipeline.yaml``, run in this
process by :mod:`unspur.clip_testbed`, no Ray). Per seed (worlds' ``seed`` plus the run's), two
models, each frozen and evaluated on the fine-tuning world's balanced eval split (test by default)
with its own zero-shot head and with SEraser (:class:`unspur.seraser.PromptTuner`: per image a
fresh prompt context tuned on the foreground / background views of the image's object mask, the
``object_rle`` of the rendered table, i.e. the union of its part masks):

(b) a tiny CLIP pretrained the way web data is captioned: the pipeline's ``pretrain`` stage on its
    ``pretrain_data`` world with rho 0.9 (class i mostly on background i) and captions naming only
    the object (``caption_column: caption``); zero-shot.
(a) the pipeline's pretrained model FLYP-fine-tuned on the biased train split (the shortcut).

Lines: per seed and model, then (b)'s means over seeds (``model=web_pretrained ...``), then (a)'s
means as the last line:

    acc_model=.. wga_model=.. acc_seraser=.. wga_seraser=..

``--check`` also runs SEraser on the val split and applies ``unspur adapt``'s check
(:class:`unspur.config.AdaptCheckConfig` defaults: keep the tuned predictions only when val wga does
not fall and val accuracy falls by at most 0.02, else keep the zero-shot head): the per-seed lines
add the val numbers and the verdict, ``unchecked`` lines give the means without the check, and the
``seraser`` numbers of the last lines are SEraser as checked. ``--models a`` skips (b), ``--models b``
(a) (the last line is then (b)'s means).

``--fill black,grey,mean`` runs SEraser once per fill on the same trained models (how the removed
region is filled, to be chosen on ``--split val``): the per-seed lines and the means carry
``fill=..``, each fill's means are printed, and the last line is the first fill's.

Overrides: ``<stage>.<key>=<value>`` address the pipeline's stages (applied to both models'
recipes, after (b)'s own), ``seraser.<key>=<value>`` the :class:`unspur.config.SEraserConfig`:

    python benchmarks/seraser_effect.py --seeds 3 --fill grey
    python benchmarks/seraser_effect.py --seeds 1 --split val --fill black,grey,mean
    python benchmarks/seraser_effect.py --seeds 1 --split val seraser.steps=40 flyp.train.epochs=2
    python benchmarks/seraser_effect.py --seeds 3 --check --models a seraser.steps=40 seraser.augment_views=4
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from unspur.clip_testbed import (
    fine_tuned_model,
    map_seeds,
    parse_seed_args,
    pretrained_model,
    recipe,
    stage_world,
)
from unspur.config import AdaptCheckConfig, ClipModelConfig, SEraserConfig
from unspur.config.base import apply_overrides, parse_overrides
from unspur.data.spuriousworld import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset
from unspur.metrics import summarize
from unspur.models.families import get_family
from unspur.seraser import PromptTuner, check_verdict

#: (b): the pretraining world's classes sit on their backgrounds as in web data, captions name only the object
WEB_PRETRAINING = ("pretrain_data.spuriousworld.rho=0.9", "pretrain.data.caption_column=caption")
STAGES = ("pretrain_data", "data", "pretrain", "flyp")
MODELS = {"b": "web_pretrained", "a": "flyp"}
FILLS = ("black", "grey", "mean", "blur")
KEYS = ("acc_model", "wga_model", "acc_seraser", "wga_seraser")
FAMILY = get_family("clip")


def seraser_eval(model, df: pd.DataFrame, cfg: ClipModelConfig, seraser: SEraserConfig) -> dict[str, Any]:
    """SEraser on every row of ``df`` (masks: its ``object_rle``) -> the zero-shot head's and the
    tuned prompt's accuracies, how many predictions tuning changed, the mean objective at the
    first and the last step."""
    masks = pd.DataFrame({"image_id": df["image_id"], "concept": "object", "rle": df["object_rle"]})
    data = ImageMaskDataset(df, masks, cfg.img_size, mean=(0.0,) * 3, std=(1.0,) * 3, cache=False)
    tuner = PromptTuner(model, FAMILY.tokenizer(cfg), cfg.classes, seraser, model.zero_shot.templates)
    before, after, loss = [], [], []
    for start in range(0, len(data), seraser.episodes):
        items = [data[i] for i in range(start, min(start + seraser.episodes, len(data)))]
        result = tuner.run(
            torch.stack([it["image"] for it in items]),
            torch.stack([it["mask"] > 0.5 for it in items]),
            [it["image_id"] for it in items],
        )
        before.append(result.zero_shot.argmax(1))
        after.append(result.tuned.argmax(1))
        loss.append(torch.stack([result.loss_start, result.loss_end], 1))
    labels, groups = df["label"].to_numpy(), df["group"].astype(str).to_numpy()
    pred_model, pred_seraser = torch.cat(before).numpy(), torch.cat(after).numpy()
    model_m, seraser_m = summarize(pred_model, labels, groups), summarize(pred_seraser, labels, groups)
    losses = torch.cat(loss).nanmean(0)
    return {
        "acc_model": model_m["acc"],
        "wga_model": model_m["wga"],
        "acc_seraser": seraser_m["acc"],
        "wga_seraser": seraser_m["wga"],
        "worst_model": model_m["worst_group"],
        "worst_seraser": seraser_m["worst_group"],
        "changed": int((pred_model != pred_seraser).sum()),
        "loss_start": float(losses[0]),
        "loss_end": float(losses[1]),
    }


def checked(model, val: pd.DataFrame, cfg, seraser: SEraserConfig, numbers: dict[str, Any]) -> dict[str, Any]:
    """``unspur adapt``'s check on ``val`` (:func:`unspur.seraser.check_verdict`, default
    :class:`AdaptCheckConfig`): the val numbers, the verdict, and the eval split's ``numbers`` as
    the check leaves them (``unchecked_*`` keep SEraser's own; a failed check keeps the model's)."""
    on_val = seraser_eval(model, val, cfg, seraser)
    before = {"acc": on_val["acc_model"], "wga": on_val["wga_model"]}
    after = {"acc": on_val["acc_seraser"], "wga": on_val["wga_seraser"]}
    trusted, _ = check_verdict(before, after, AdaptCheckConfig())
    out = {**numbers, "trusted": trusted, **{f"val_{k}": on_val[k] for k in KEYS}}
    out.update({f"unchecked_{k}": numbers[k] for k in ("acc_seraser", "wga_seraser")})
    if not trusted:
        out.update(acc_seraser=numbers["acc_model"], wga_seraser=numbers["wga_model"])
    return out


def run_seed(
    recipes: dict[str, dict[str, dict[str, Any]]],
    serasers: list[SEraserConfig],
    seed: int,
    split: str,
    cache: Path | None = None,
    check: bool = False,
    models: tuple[str, ...] = ("b", "a"),
) -> dict[str, dict[str, dict[str, Any]]]:
    """One seed: (b) the web-like pretrained model zero-shot, (a) the pipeline's pretrained model
    after FLYP (``models``: which); each evaluated with its zero-shot head and with SEraser (each
    config of ``serasers``, by fill) on the eval split, with ``check`` also on val (:func:`checked`)
    -> ``{model: {fill: numbers}}``."""
    world = stage_world(recipes["a"]["data"], seed)
    images, _ = generate_tables(world, splits=tuple(dict.fromkeys(("train", "val", split))))
    train, val, test = (images[images["split"] == s] for s in ("train", "val", split))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for name in models:
        stages = recipes[name]
        t0 = time.perf_counter()
        model, cfg = pretrained_model(stages, seed, world.classes, cache)
        epoch = fine_tuned_model(model, cfg, stages, "flyp", seed, train, val, cache) if name == "a" else None
        t_train = time.perf_counter() - t0
        out[name] = {}
        for seraser in serasers:
            t1 = time.perf_counter()
            numbers = {**seraser_eval(model, test, cfg, seraser), "epoch": epoch}
            out[name][seraser.fill] = checked(model, val, cfg, seraser, numbers) if check else numbers
            out[name][seraser.fill].update(t_train=t_train, t_seraser=time.perf_counter() - t1)
    return out


def _run_seed(
    job: tuple[Any, list[SEraserConfig], int, str, int, Path | None, bool, tuple[str, ...]],
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`run_seed` in a worker process (``--workers``), with its own torch thread count."""
    recipes, serasers, seed, split, threads, cache, check, models = job
    torch.set_num_threads(threads)
    return run_seed(recipes, serasers, seed, split, cache, check, models)


def _line(r: dict[str, Any]) -> str:
    return " ".join(f"{k}={r[k]:.3f}" for k in KEYS)


def _fills(text: str) -> list[str]:
    fills = list(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    bad = [f for f in fills if f not in FILLS]
    if not fills or bad:
        raise argparse.ArgumentTypeError(f"--fill takes a comma list of {', '.join(FILLS)}; got {text!r}")
    return fills


def _check_text(m: dict[str, Any]) -> str:
    if "trusted" not in m:
        return ""
    unchecked = " ".join(f"unchecked_{k}={m[f'unchecked_{k}']:.3f}" for k in ("acc_seraser", "wga_seraser"))
    val = " ".join(f"val_{k}={m[f'val_{k}']:.3f}" for k in KEYS)
    return f" trusted={'yes' if m['trusted'] else 'no'} {unchecked} {val}"


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fill", type=_fills, default=["black"], help=f"one or a comma list of {FILLS}")
    parser.add_argument("--check", action="store_true", help="apply unspur adapt's check on the val split")
    parser.add_argument("--models", choices=("ab", "a", "b"), default="ab", help="a or b: that model only")
    args = parse_seed_args(parser, argv, "STAGE.KEY=VALUE or seraser.KEY=VALUE")
    if args.check and args.split == "val":
        raise SystemExit("--check tunes the val split to decide; evaluate on --split test")
    ours = [o for o in args.overrides if o.startswith("seraser.")]
    stage_overrides = [o for o in args.overrides if not o.startswith("seraser.")]
    seraser_raw = apply_overrides({}, parse_overrides([o[len("seraser.") :] for o in ours]))
    serasers = [SEraserConfig.model_validate({**seraser_raw, "fill": fill}) for fill in args.fill]
    recipes = {
        "a": recipe(args.pipeline, stage_overrides, STAGES),
        "b": recipe(args.pipeline, [*WEB_PRETRAINING, *stage_overrides], STAGES),
    }
    if args.split == "val" and recipes["a"]["flyp"].get("run", {}).get("select", "last") != "last":
        raise SystemExit("run.select chooses epochs on the val split; evaluate on --split test")
    models = tuple(m for m in ("b", "a") if m in args.models)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = [(recipes, serasers, s, args.split, args.threads, args.cache, args.check, models) for s in seeds]
    results = map_seeds(_run_seed, jobs, args.workers)
    several = len(serasers) > 1
    first = serasers[0]
    print(
        f"fill={','.join(args.fill)} steps={first.steps} lr={first.lr} split={args.split} check={args.check}",
        flush=True,
    )
    for fill in args.fill:
        tag = f"fill={fill} " if several else ""
        for seed, r in zip(seeds, results, strict=True):
            for name in models:
                m = r[name][fill]
                print(
                    f"{tag}seed={seed} model={MODELS[name]} {_line(m)} worst_model={m['worst_model']} "
                    f"worst_seraser={m['worst_seraser']} changed={m['changed']} loss_start={m['loss_start']:.3f} "
                    f"loss_end={m['loss_end']:.3f} t_train={m['t_train']:.0f}s t_seraser={m['t_seraser']:.0f}s"
                    f"{_check_text(m)}",
                    flush=True,
                )
    means = {
        fill: {
            name: {k: statistics.fmean(r[name][fill][k] for r in results) for k in KEYS} for name in models
        }
        for fill in args.fill
    }
    for fill in reversed(args.fill):  # the first fill's lines come last
        tag = f"fill={fill} " if several else ""
        if args.check:
            for name in models:
                raw = {
                    k: statistics.fmean(r[name][fill].get(f"unchecked_{k}", 0.0) for r in results)
                    for k in KEYS[2:]
                }
                print(
                    f"unchecked {tag}model={MODELS[name]} " + " ".join(f"{k}={v:.3f}" for k, v in raw.items())
                )
        if args.seeds > 1:
            for name in models:
                stds = " ".join(
                    f"{k}={statistics.stdev(r[name][fill][k] for r in results):.3f}" for k in KEYS
                )
                print(f"std {tag}model={MODELS[name]} {stds}")
        if "b" in models:
            print(f"{tag}model={MODELS['b']} {_line(means[fill]['b'])}")
        if fill != args.fill[0] and "a" in models:
            print(f"{tag}model={MODELS['a']} {_line(means[fill]['a'])}")
    print(_line(means[args.fill[0]][models[-1]]))
    return means[args.fill[0]]


if __name__ == "__main__":
    main()
