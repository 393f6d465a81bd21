"""Does CFT remove SpuriousWorld's shortcut? base -> CFT against the honest control.

Per seed: render SpuriousWorld (its ``seed`` set to the run's seed), train the base model with
ERM on the biased train split (``finetune_base.yaml``), then from that base (a) CFT on the
few-shot images (``finetune_cft.yaml``: loss, few-shot protocol, optimisation) and (b) the
control: ERM fine-tuning of the base on the very same few images with the very same
optimisation (epochs, lr, trainable parameters, ``run.select``: the epoch kept, chosen on the
val split); only the loss differs. All three models are evaluated on the balanced eval split
(test by default; ``--split val`` for any choice of recipe, with ``cft.run.select=last``
since a val-chosen epoch would be scored on its own split): average accuracy, worst-group
accuracy and relevance alignment (mass of the rollout map inside the object mask). Everything
runs in this process with the real training code (``unspur.training``), no Ray. Last line,
means over seeds:

    acc_base=.. wga_base=.. acc_cft=.. wga_cft=.. acc_control=.. wga_control=.. align_base=.. align_cft=..

The CFT and control runs keep ``run.select``'s rule of ``unspur finetune``: the base (their
starting model) is scored on val before the first epoch and returned unchanged when no epoch beats
it (``kept_cft=-1`` on a seed's line).

Across bias strengths and worlds: ``--rho 0.985,0.9,0.7`` (train co-occurrence strengths) and
``--worlds K`` (world 0: the config's backgrounds; world k: a choice of 4 of the generator's 8
backgrounds and a class-to-background assignment drawn from seed k) print, after each seed's
line, one line of seed means per (world, rho)

    world=.. rho=.. acc_base=.. wga_base=.. acc_cft=.. wga_cft=.. acc_control=.. wga_control=.. backgrounds=..

and last ``worst_harm=.. worst_acc_drop=.. min_gain_biased=.. mean_gain_biased=.. n_biased=..``
(see :func:`curve_summary`; "biased" lines are those whose base wga is <= 0.3).

    python benchmarks/cft_effect.py --seeds 3
    python benchmarks/cft_effect.py --seeds 3 --worlds 4 --rho 0.985,0.95,0.9,0.8
    python benchmarks/cft_effect.py --seeds 3 --world-ids 2,3 --rho 0.97   # a part; cft_curve.py merges
    python benchmarks/cft_effect.py --seeds 1 --split val cft.run.select=last cft.train.lr=3e-4

Reruns: ``--cache DIR`` keeps each base model (keyed by its config, world, rho and seed; a hit
gives the numbers a fresh run would), so a recipe change of CFT reruns only CFT and the control;
``--seed-ids 0,2`` runs some seeds of a line (``cft_curve.py --rerun`` merges them); ``--trace
FILE`` appends each seed's CFT evaluations (val, and the eval split for analysis) as JSON lines,
so the choice any selection rule makes on val can be replayed.

    python benchmarks/cft_effect.py --world-ids 1 --rho 0.985 --seed-ids 2 --cache bases --trace t.jsonl

A choice made on validation: ``--space cft_relevance`` (a grid space of ``tune_spaces/``, or a
path) runs CFT once per grid point from the same base and reports as "CFT" the point whose kept
model has the highest val wga (accuracy breaking ties), as ``unspur sweep`` over that space
picks its best trial (the seed
line adds ``picked=`` and each point's ``val_wga``; the control uses the picked point's
optimisation). The benchmark scores the kept models every ``run.eval_every`` epochs of the CFT
config (5); a sweep evaluates every epoch.

    python benchmarks/cft_effect.py --seeds 3 --world-ids 2,4 --rho 0.985 --space cft_relevance
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from unspur.config import FinetuneConfig, LossConfig, load_config
from unspur.data.spuriousworld import BACKGROUNDS, generate_tables
from unspur.data.torch_dataset import ImageMaskDataset, few_shot
from unspur.digest import config_digest
from unspur.losses import get_loss
from unspur.models import build_model
from unspur.training import evaluate, fit, improves, seed_everything, selection_score
from unspur.tune_spaces import grid_points, load_space, validate_point

KEYS = ("acc_base", "wga_base", "acc_cft", "wga_cft", "acc_control", "wga_control", "align_base", "align_cft")
CURVE_KEYS = KEYS[:6]


def _split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    base, cft = [], []
    for item in items:
        head, _, rest = item.partition(".")
        if head not in ("base", "cft") or not rest:
            raise SystemExit(f"override {item!r} must start with base. or cft. (e.g. cft.train.lr=1e-4)")
        (base if head == "base" else cft).append(rest)
    return base, cft


def _loader(ds: ImageMaskDataset, batch_size: int, shuffle: bool) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, drop_last=False)


def _fit(model, ds, cfg: FinetuneConfig, loss_cfg, base_model, val_loader, trace=None) -> tuple[int, Any]:
    """``fit`` plus the config's ``run.select``, as ``unspur finetune`` applies it: the starting
    weights are scored on the validation split before the first epoch, then every ``eval_every``
    epochs the model is; an epoch replaces the weights kept so far when ``unspur.training.improves``
    says so (a strictly better score, by the margins ``run.min_gain`` / ``run.max_drop`` over the
    starting model), so when no epoch beats the starting model it is returned unchanged. Returns
    the kept epoch (-1: the starting model; the last epoch under ``run.select: last``).
    ``trace(epoch, val_evaluation)``, when given, is called at every evaluation (the start's too)."""
    spec = get_loss(loss_cfg.name)
    use_base = base_model if loss_cfg.kl_weight > 0 else None
    best: dict[str, Any] = {"epoch": cfg.train.epochs - 1}
    select, run = cfg.run.select, cfg.run
    start = None
    if select != "last":
        start = evaluate(model, val_loader)
        best.update(epoch=-1, eval=start, state=copy.deepcopy(model.state_dict()))
        if trace:
            trace(-1, start)

    def keep_best(epoch: int, _terms: dict[str, float]) -> None:
        if select == "last" or ((epoch + 1) % run.eval_every and epoch + 1 < cfg.train.epochs):
            return
        ev = evaluate(model, val_loader)
        if trace:
            trace(epoch, ev)
        if improves(select, ev, best["eval"], start, run.min_gain, run.max_drop):
            best.update(epoch=epoch, eval=ev, state=copy.deepcopy(model.state_dict()))

    fit(
        model,
        _loader(ds, cfg.train.batch_size, True),
        spec,
        loss_cfg,
        cfg.train,
        base_model=use_base,
        relevance=cfg.relevance,
        on_epoch=keep_best,
    )
    if "state" in best:
        model.load_state_dict(best["state"])
    return int(best["epoch"]), best.get("eval")


def _finetune(
    model, sub, parts, cfg: FinetuneConfig, loss_cfg, base_model, img_size: int, val_loader, trace=None
) -> tuple[int, Any]:
    seed_everything(cfg.train.seed)
    ds = ImageMaskDataset(sub, parts, img_size, train_aug=cfg.train.augment)
    return _fit(model, ds, cfg, loss_cfg, base_model, val_loader, trace)


def _base(base_cfg: FinetuneConfig, ds: ImageMaskDataset, val_loader, cache: Path | None):
    """The base model of ``base_cfg`` (its seed set): trained, or loaded from ``cache`` where a
    run of the same config (world, rho, seed included) left it. Training is deterministic per
    seed and every later step reseeds, so a hit gives the numbers a fresh run would."""
    seed_everything(base_cfg.train.seed)
    base = build_model(base_cfg.model)
    path = Path(cache) / f"base-{config_digest(_base_key(base_cfg))}.pt" if cache is not None else None
    if path is not None and path.is_file():
        base.load_state_dict(torch.load(path, map_location="cpu"))
        return base
    _fit(base, ds, base_cfg, base_cfg.loss, None, val_loader)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        torch.save(base.state_dict(), partial)
        partial.replace(path)  # atomic: a parallel run never reads a half-written file
    return base


def _base_key(base_cfg: FinetuneConfig) -> FinetuneConfig:
    """``base_cfg`` as its cache key: under ``run.select: last`` the base never reads the val and
    test splits, so their sizes are set to the defaults (a run with a larger val split reuses it)."""
    if base_cfg.run.select != "last":
        return base_cfg
    sw = base_cfg.data.spuriousworld
    fields = type(sw).model_fields
    sizes = {k: fields[k].default for k in ("n_val", "n_test")}
    return base_cfg.model_copy(
        update={"data": base_cfg.data.model_copy(update={"spuriousworld": sw.model_copy(update=sizes)})}
    )


def _tracer(rows: list[dict[str, float]], model, eval_loader):
    """A ``_fit`` trace that records, at every evaluation of ``model``, val acc/wga and (for
    analysis only, never for a choice) the eval split's; the extra evaluation runs under a forked
    RNG, so training draws the same numbers as without the trace."""

    def trace(epoch: int, val: dict[str, Any]) -> None:
        with torch.random.fork_rng(devices=[]):
            ev = evaluate(model, eval_loader)
        rows.append(
            {"epoch": epoch, "val_acc": val["acc"], "val_wga": val["wga"], "acc": ev["acc"], "wga": ev["wga"]}
        )

    return trace


def run_seed(
    base_cfg: FinetuneConfig,
    cft_cfg: FinetuneConfig,
    seed: int,
    split: str,
    cache: Path | None = None,
    traced: bool = False,
    candidates: list[tuple[str, FinetuneConfig]] | None = None,
) -> dict[str, Any]:
    """One seed: base, CFT, control -> the eight numbers of the last line (plus timings; with
    ``traced`` the CFT run's evaluations as ``trace_cft``).

    ``candidates`` (label, CFT config) pairs: CFT runs once per candidate from the same base and
    the candidate whose kept model ranks first on val is "the" CFT run, ranked as ``unspur sweep``
    ranks its trials (``selection_score``: wga, accuracy breaking ties; then the first listed);
    only the picked model is kept; the control then uses the picked
    candidate's optimisation. ``picked`` and ``trial_val_wga`` say which and why."""
    sw = base_cfg.data.spuriousworld.model_copy(update={"seed": seed})
    t0 = time.perf_counter()
    images, parts = generate_tables(sw, splits=tuple(dict.fromkeys(("train", "val", split))))
    train_rows = images[images["split"] == "train"]
    size = base_cfg.model.img_size
    eval_loader = _loader(ImageMaskDataset(images[images["split"] == split], parts, size), 128, False)
    val_loader = _loader(ImageMaskDataset(images[images["split"] == "val"], parts, size), 128, False)
    base_cfg = base_cfg.model_copy(update={"train": base_cfg.train.model_copy(update={"seed": seed})})
    ds = ImageMaskDataset(train_rows, None, size, train_aug=base_cfg.train.augment)
    base = _base(base_cfg, ds, val_loader, cache)
    t_base = time.perf_counter() - t0
    frozen = copy.deepcopy(base).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    fs = cft_cfg.fewshot
    sub = few_shot(train_rows, fs.per_class, fs.class_fraction, seed) if fs.enabled else train_rows
    trials = candidates or [("", cft_cfg)]
    t1 = time.perf_counter()
    picked: dict[str, Any] | None = None
    trial_val_wga: dict[str, float] = {}
    for label, trial_cfg in trials:
        trial_cfg = trial_cfg.model_copy(update={"train": trial_cfg.train.model_copy(update={"seed": seed})})
        model = copy.deepcopy(base)
        rows: list[dict[str, float]] = []
        trace = _tracer(rows, model, eval_loader) if traced else None
        kept, val = _finetune(model, sub, parts, trial_cfg, trial_cfg.loss, frozen, size, val_loader, trace)
        if val is not None:
            trial_val_wga[label] = val["wga"]
        score = selection_score("best_wga", val) if val is not None else None
        if picked is None or (score is not None and score > picked["score"]):
            picked = {
                "label": label,
                "cfg": trial_cfg,
                "model": model,
                "kept": kept,
                "score": score,
                "trace": rows,
            }
    t_cft = time.perf_counter() - t1
    cft_cfg, cft_model, kept_cft, trace_rows = picked["cfg"], picked["model"], picked["kept"], picked["trace"]
    control = copy.deepcopy(base)
    kept_control, _ = _finetune(control, sub, parts, cft_cfg, LossConfig(name="erm"), None, size, val_loader)
    rel = cft_cfg.relevance
    ev = {
        name: evaluate(m, eval_loader, with_relevance=name != "control", relevance=rel)
        for name, m in (("base", base), ("cft", cft_model), ("control", control))
    }
    out = {f"{k}_{name}": ev[name][k] for name in ev for k in ("acc", "wga")}
    out.update(align_base=ev["base"]["align_mass_in"], align_cft=ev["cft"]["align_mass_in"])
    out.update(
        t_base=t_base,
        t_cft=t_cft,
        t_total=time.perf_counter() - t0,
        n_fewshot=len(sub),
        kept_cft=kept_cft,
        kept_control=kept_control,
        worst_base=ev["base"]["worst_group"],
        worst_cft=ev["cft"]["worst_group"],
    )
    if candidates:
        out["picked"] = picked["label"]
        out["trial_val_wga"] = trial_val_wga
    if traced:
        out["trace_cft"] = trace_rows
    return out


def world_backgrounds(world: int, default: list[str]) -> list[str]:
    """The backgrounds of world ``world``, in class order (class i sits on entry i in train).

    World 0 is ``default`` (the config's). World k > 0 is drawn from seed k: a random choice of
    ``len(default)`` of the generator's backgrounds (``BACKGROUNDS``, 8) in random order, which is
    at once the choice and the class-to-background assignment.
    """
    if world == 0:
        return list(default)
    names = sorted(BACKGROUNDS)
    order = np.random.default_rng(world).permutation(len(names))[: len(default)]
    return [names[i] for i in order]


def curve_summary(lines: list[dict[str, float]], biased: float = 0.3) -> dict[str, float]:
    """The last line of a curve over the (world, rho) lines (seed means each).

    worst_harm: the largest drop of mean wga from base to CFT (0 if CFT never lowers it);
    worst_acc_drop: the same for mean average accuracy; min/mean_gain_biased: the wga gain of CFT
    over the lines whose base wga is <= ``biased`` (nan when there is none), n_biased their count.
    """
    gains = [r["wga_cft"] - r["wga_base"] for r in lines if r["wga_base"] <= biased]
    return {
        "worst_harm": max(0.0, *(r["wga_base"] - r["wga_cft"] for r in lines)),
        "worst_acc_drop": max(0.0, *(r["acc_base"] - r["acc_cft"] for r in lines)),
        "min_gain_biased": min(gains) if gains else math.nan,
        "mean_gain_biased": statistics.fmean(gains) if gains else math.nan,
        "n_biased": float(len(gains)),
    }


def _with_world(cfg: FinetuneConfig, world: int, rho: float | None) -> FinetuneConfig:
    sw = cfg.data.spuriousworld
    update: dict[str, Any] = {"backgrounds": world_backgrounds(world, sw.backgrounds)}
    if rho is not None:
        update["rho"] = rho
    data = cfg.data.model_copy(update={"spuriousworld": sw.model_copy(update=update)})
    return cfg.model_copy(update={"data": data})


def _run_seeds(base_cfg: FinetuneConfig, cft_cfg: FinetuneConfig, args: argparse.Namespace, prefix: str):
    rows = []
    for seed in args.seed_ids or range(args.seeds):
        r = run_seed(
            base_cfg,
            cft_cfg,
            seed,
            args.split,
            args.cache,
            traced=args.trace is not None,
            candidates=args.candidates,
        )
        rows.append(r)
        if args.trace is not None:
            with open(args.trace, "a") as f:
                f.write(json.dumps({"line": f"{prefix}seed={seed}", "cft": r["trace_cft"]}) + "\n")
        picked = ""
        if args.candidates:
            vals = ",".join(f"{label}:{v:.3f}" for label, v in r["trial_val_wga"].items())
            picked = f" picked={r['picked']} val_wga={vals}"
        print(
            f"{prefix}seed={seed} "
            + " ".join(f"{k}={r[k]:.3f}" for k in KEYS)
            + f" worst_base={r['worst_base']} worst_cft={r['worst_cft']} n_fewshot={r['n_fewshot']}"
            + f" kept_cft={r['kept_cft']} kept_control={r['kept_control']}"
            + f" t_base={r['t_base']:.0f}s t_cft={r['t_cft']:.0f}s t_total={r['t_total']:.0f}s"
            + picked,
            flush=True,
        )
    return rows


def _rhos(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rho takes comma-separated numbers, got {text!r}") from None
    if not values or not all(0.0 <= v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"--rho values must lie in [0, 1], got {text!r}")
    return values


def _ids(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"must be integers >= 0, got {text!r}")
    return values


def _candidates(space_ref: str, cft_cfg: FinetuneConfig) -> list[tuple[str, FinetuneConfig]]:
    """The CFT configs of a grid space's points in the space's given order, each labelled by its
    values joined with ``+`` (``rollout+0.003``; the keys are the space file's)."""
    space = load_space(space_ref)
    if space.search != "grid" or space.metric != "val_wga" or space.mode != "max":
        raise SystemExit(
            f"--space {space_ref}: the benchmark replays a grid picked on max val_wga; this space has "
            f"search {space.search!r}, metric {space.metric!r}, mode {space.mode!r}"
        )
    if cft_cfg.run.select == "last":
        raise SystemExit("--space picks on the kept models' val wga; run.select: last keeps none on val")
    return [
        (
            "+".join(str(v) for v in point.values()),
            validate_point(cft_cfg, point, space_ref),
        )
        for point in grid_points(space)
    ]


def _curve(args: argparse.Namespace, base_cfg: FinetuneConfig, cft_cfg: FinetuneConfig) -> dict[str, float]:
    """One line per (world, rho) with the seed means, then the summary line (curve_summary)."""
    lines = []
    for world in args.world_ids or range(args.worlds or 1):
        for rho in args.rho or [None]:
            cfg = _with_world(base_cfg, world, rho)
            sw = cfg.data.spuriousworld
            pairs = ",".join(f"{c}:{b}" for c, b in zip(sw.classes, sw.backgrounds, strict=False))
            prefix = f"world={world} rho={sw.rho:g} "
            rows = _run_seeds(cfg, cft_cfg, args, prefix)
            means = {k: statistics.fmean(r[k] for r in rows) for k in KEYS}
            lines.append(means)
            print(
                prefix + " ".join(f"{k}={means[k]:.3f}" for k in CURVE_KEYS) + f" backgrounds={pairs}",
                flush=True,
            )
    summary = curve_summary(lines)
    print(" ".join(f"{k}={v:.3f}" if k != "n_biased" else f"{k}={v:.0f}" for k, v in summary.items()))
    return summary


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..K-1; the last line averages them")
    parser.add_argument("--base-config", default="workflows/configs/finetune_base.yaml")
    parser.add_argument("--cft-config", default="workflows/configs/finetune_cft.yaml")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rho", type=_rhos, help="train co-occurrence strengths, comma-separated (0.985,0.9)"
    )
    parser.add_argument("--worlds", type=int, help="worlds 0..K-1 (0: the config's backgrounds)")
    parser.add_argument(
        "--world-ids", type=_ids, help="these worlds only, comma-separated (2,3): a curve run in parts"
    )
    parser.add_argument(
        "--seed-ids", type=_ids, help="these seeds only, comma-separated (0,2): rerun some seeds of a curve"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        help="folder keeping base models (keyed by config, world, rho, seed): reruns skip them",
    )
    parser.add_argument(
        "--trace",
        type=Path,
        help="append each seed's CFT evaluations (val, and the eval split) as JSON lines",
    )
    parser.add_argument(
        "--space",
        help="a grid search space (tune_spaces/NAME.yaml or a path): CFT runs at every point and the "
        "point whose kept model has the highest val wga is reported, as `unspur sweep` picks it",
    )
    parser.add_argument("overrides", nargs="*", help="base.KEY=VALUE or cft.KEY=VALUE (dotted config keys)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or (args.worlds is not None and args.worlds < 1):
        raise SystemExit("--seeds and --worlds must be >= 1")
    torch.set_num_threads(args.threads)
    base_over, cft_over = _split_overrides(args.overrides)
    base_cfg = load_config(FinetuneConfig, args.base_config, base_over)
    cft_cfg = load_config(FinetuneConfig, args.cft_config, cft_over)
    if args.split == "val" and {base_cfg.run.select, cft_cfg.run.select} != {"last"}:
        raise SystemExit("run.select chooses epochs on the val split; evaluate on --split test")
    if base_cfg.data.spuriousworld is None:
        raise SystemExit(f"{args.base_config} must render SpuriousWorld (data.spuriousworld)")
    args.candidates = _candidates(args.space, cft_cfg) if args.space else None
    if args.worlds is not None or args.rho is not None or args.world_ids is not None:
        return _curve(args, base_cfg, cft_cfg)
    rows = _run_seeds(base_cfg, cft_cfg, args, "")
    means = {k: statistics.fmean(r[k] for r in rows) for k in KEYS}
    if len(rows) > 1:
        print("std " + " ".join(f"{k}={statistics.stdev(r[k] for r in rows):.3f}" for k in KEYS))
    print(" ".join(f"{k}={means[k]:.3f}" for k in KEYS))
    return means


if __name__ == "__main__":
    main()
