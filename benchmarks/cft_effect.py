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

    python benchmarks/cft_effect.py --seeds 3
    python benchmarks/cft_effect.py --seeds 1 --split val cft.run.select=last cft.train.lr=3e-4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import torch
from torch.utils.data import DataLoader

from unspur.config import FinetuneConfig, LossConfig, load_config
from unspur.data.spuriousworld import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset, few_shot
from unspur.losses import get_loss
from unspur.models import build_model
from unspur.training import evaluate, fit, seed_everything, selection_score

KEYS = ("acc_base", "wga_base", "acc_cft", "wga_cft", "acc_control", "wga_control", "align_base", "align_cft")


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


def _fit(model, ds, cfg: FinetuneConfig, loss_cfg, base_model, val_loader) -> None:
    """``fit`` plus the config's ``run.select``: every ``eval_every`` epochs the model is scored on
    the validation split and the best-scoring epoch's weights are kept (as ``unspur finetune`` does)."""
    spec = get_loss(loss_cfg.name)
    use_base = base_model if loss_cfg.kl_weight > 0 else None
    best: dict[str, Any] = {}

    def keep_best(epoch: int, _terms: dict[str, float]) -> None:
        if cfg.run.select == "last" or ((epoch + 1) % cfg.run.eval_every and epoch + 1 < cfg.train.epochs):
            return
        score = selection_score(cfg.run.select, evaluate(model, val_loader))
        if not best or score > best["score"]:
            best.update(score=score, state=copy.deepcopy(model.state_dict()))

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
    if best:
        model.load_state_dict(best["state"])


def _finetune(
    model, sub, parts, cfg: FinetuneConfig, loss_cfg, base_model, img_size: int, val_loader
) -> None:
    seed_everything(cfg.train.seed)
    ds = ImageMaskDataset(sub, parts, img_size, train_aug=cfg.train.augment)
    _fit(model, ds, cfg, loss_cfg, base_model, val_loader)


def run_seed(base_cfg: FinetuneConfig, cft_cfg: FinetuneConfig, seed: int, split: str) -> dict[str, Any]:
    """One seed: base, CFT, control -> the eight numbers of the last line (plus timings)."""
    sw = base_cfg.data.spuriousworld.model_copy(update={"seed": seed})
    t0 = time.perf_counter()
    images, parts = generate_tables(sw, splits=tuple(dict.fromkeys(("train", "val", split))))
    train_rows = images[images["split"] == "train"]
    size = base_cfg.model.img_size
    eval_loader = _loader(ImageMaskDataset(images[images["split"] == split], parts, size), 128, False)
    val_loader = _loader(ImageMaskDataset(images[images["split"] == "val"], parts, size), 128, False)
    base_cfg = base_cfg.model_copy(update={"train": base_cfg.train.model_copy(update={"seed": seed})})
    seed_everything(seed)
    base = build_model(base_cfg.model)
    ds = ImageMaskDataset(train_rows, None, size, train_aug=base_cfg.train.augment)
    _fit(base, ds, base_cfg, base_cfg.loss, None, val_loader)
    t_base = time.perf_counter() - t0
    frozen = copy.deepcopy(base).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    fs = cft_cfg.fewshot
    sub = few_shot(train_rows, fs.per_class, fs.class_fraction, seed) if fs.enabled else train_rows
    cft_cfg = cft_cfg.model_copy(update={"train": cft_cfg.train.model_copy(update={"seed": seed})})
    cft_model, control = copy.deepcopy(base), copy.deepcopy(base)
    t1 = time.perf_counter()
    _finetune(cft_model, sub, parts, cft_cfg, cft_cfg.loss, frozen, size, val_loader)
    t_cft = time.perf_counter() - t1
    _finetune(control, sub, parts, cft_cfg, LossConfig(name="erm"), None, size, val_loader)
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
        worst_base=ev["base"]["worst_group"],
        worst_cft=ev["cft"]["worst_group"],
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..K-1; the last line averages them")
    parser.add_argument("--base-config", default="workflows/configs/finetune_base.yaml")
    parser.add_argument("--cft-config", default="workflows/configs/finetune_cft.yaml")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="base.KEY=VALUE or cft.KEY=VALUE (dotted config keys)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    torch.set_num_threads(args.threads)
    base_over, cft_over = _split_overrides(args.overrides)
    base_cfg = load_config(FinetuneConfig, args.base_config, base_over)
    cft_cfg = load_config(FinetuneConfig, args.cft_config, cft_over)
    if args.split == "val" and {base_cfg.run.select, cft_cfg.run.select} != {"last"}:
        raise SystemExit("run.select chooses epochs on the val split; evaluate on --split test")
    if base_cfg.data.spuriousworld is None:
        raise SystemExit(f"{args.base_config} must render SpuriousWorld (data.spuriousworld)")
    rows = []
    for seed in range(args.seeds):
        r = run_seed(base_cfg, cft_cfg, seed, args.split)
        rows.append(r)
        print(
            f"seed={seed} "
            + " ".join(f"{k}={r[k]:.3f}" for k in KEYS)
            + f" worst_base={r['worst_base']} worst_cft={r['worst_cft']} n_fewshot={r['n_fewshot']}"
            + f" t_base={r['t_base']:.0f}s t_cft={r['t_cft']:.0f}s t_total={r['t_total']:.0f}s",
            flush=True,
        )
    means = {k: statistics.fmean(r[k] for r in rows) for k in KEYS}
    if args.seeds > 1:
        print("std " + " ".join(f"{k}={statistics.stdev(r[k] for r in rows):.3f}" for k in KEYS))
    print(" ".join(f"{k}={means[k]:.3f}" for k in KEYS))
    return means


if __name__ == "__main__":
    main()
