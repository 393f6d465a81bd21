"""Which part of StarFT's KL does fine-tuning move? The class-marginal and the within-class terms.

StarFT's regulariser (METHODS.md 3) compares, per image, the teacher's and the student's softmax
over the spurious captions of the batch's *other* classes. Over the class c of each caption, the
chain rule splits the KL into two terms (``unspur.losses.starft.spuriosity_kl(part=...)``):

- class-marginal: KL(P_T || P_S), P(c) = a row's mass on class c's captions: which *other class*
  the image resembles (in SpuriousWorld: the class its background goes with, or a look-alike);
- within-class: sum_c P_T(c) KL(p_T(. | c) || p_S(. | c)): which spurious *words* (background,
  texture, photo quality) the image resembles, among one class's captions.

Per seed (the StarFT pipeline's recipe, as ``starft_effect.py`` runs it): the zero-shot model,
FLYP and StarFT, each on the eval split: average and worst-group accuracy, and both KL terms
against the zero-shot model (the teacher) over shuffled batches of the fine-tuning batch size, at
the teacher's logit scale s0 and at the StarFT config's ``kl_scale``. Last line, means over seeds:

    kl_class_flyp=.. kl_within_flyp=.. kl_class_starft=.. kl_within_starft=..   (at kl_scale)

    python benchmarks/starft_kl_parts.py --seeds 3 --split val --cache DIR [STAGE.KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from unspur.clip_testbed import (
    clip_dataset,
    evaluate_clip,
    fine_tuned_model,
    parse_seed_args,
    pretrained_model,
    recipe,
    run_seeds,
    stage_world,
    starft_stage,
    train_stage,
)
from unspur.data.spuriousworld import generate_tables
from unspur.losses.starft import spuriosity_kl
from unspur.spurious_templates import run_templates

PARTS = ("class_marginal", "within_class")


def _encode(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(image features, spurious-caption features) of ``batch``, L2-normalised."""
    return (
        model.encode_image(batch["image"], normalize=True),
        model.encode_text(batch["spurious_tokens"], normalize=True),
    )


@torch.no_grad()
def kl_parts(models, teacher, ds, batch_size: int, scales: dict[str, float]) -> dict[str, dict[str, float]]:
    """{model name: {"<part>@<scale name>": mean over ``ds``}} for each KL term (:data:`PARTS`) at
    each scale, in shuffled batches (fixed order); every model and the teacher encode a batch once."""
    loader = DataLoader(
        ds, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    keys = [f"{part}@{name}" for part in PARTS for name in scales]
    sums = {m: dict.fromkeys(keys, 0.0) for m in models}
    n = 0
    for batch in loader:
        t_img, t_spur = _encode(teacher, batch)
        for name, model in models.items():
            img, spur = _encode(model, batch)
            for part in PARTS:
                for scale_name, scale in scales.items():
                    kl = spuriosity_kl(img, spur, t_img, t_spur, batch["label"], scale, part)
                    sums[name][f"{part}@{scale_name}"] += kl.item()
        n += 1
    if n == 0:
        raise ValueError(
            f"the eval split has {len(ds)} images, fewer than one batch of {batch_size}: "
            "render more (data.spuriousworld.n_val / n_test) or lower flyp.train.batch_size"
        )
    return {m: {k: total / n for k, total in row.items()} for m, row in sums.items()}


def run_seed(stages: dict[str, dict[str, Any]], seed: int, split: str, cache: Path | None) -> dict[str, Any]:
    """One seed -> {model: {"acc", "wga", (part, scale name): value}} for zs, flyp, starft."""
    world = stage_world(stages["data"], seed)
    images, _ = generate_tables(world, splits=tuple(dict.fromkeys(("train", "val", split))))
    train, val, test = (images[images["split"] == s] for s in ("train", "val", split))
    model, cfg = pretrained_model(stages, seed, world.classes, cache)
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    starft, kinds = starft_stage(stages)
    templates = run_templates(None, kinds)
    models = {"zs": teacher, "flyp": copy.deepcopy(model), "starft": copy.deepcopy(model)}
    fine_tuned_model(models["flyp"], cfg, stages, "flyp", seed, train, val, cache)
    train_stage(models["starft"], train, cfg, starft, seed, teacher=teacher, templates=templates, val=val)
    ds = clip_dataset(test, model, cfg, ("image", "spurious_tokens", "label"), "caption", templates)
    scales = {"s0": float(teacher.logit_scale.exp()), "kl_scale": starft["loss"].get("kl_scale")}
    scales["kl_scale"] = scales["kl_scale"] or scales["s0"]
    for m in models.values():
        m.eval()
    kls = kl_parts(models, teacher, ds, starft["train"]["batch_size"], scales)
    out: dict[str, Any] = {"scales": scales}
    for name, m in models.items():
        r = evaluate_clip(m, test, cfg)
        out[name] = {"acc": r["acc"], "wga": r["wga"], **kls[name]}
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args = parse_seed_args(parser, argv, "STAGE.KEY=VALUE (e.g. starft.loss.kl_part=class_marginal)")
    stages = recipe(args.pipeline, args.overrides, ("pretrain_data", "data", "pretrain", "flyp", "starft"))
    seeds, results = run_seeds(run_seed, stages, args)
    for seed, r in zip(seeds, results, strict=True):
        scales = " ".join(f"{k}={v:.1f}" for k, v in r["scales"].items())
        for name in ("zs", "flyp", "starft"):
            row = r[name]
            print(f"seed={seed} model={name} {scales} " + " ".join(f"{k}={v:.4f}" for k, v in row.items()))
    means = {
        f"kl_{short}_{name}": statistics.fmean(r[name][f"{part}@kl_scale"] for r in results)
        for name in ("flyp", "starft")
        for short, part in (("class", "class_marginal"), ("within", "within_class"))
    }
    print(" ".join(f"{k}={v:.4f}" for k, v in means.items()))
    return means


if __name__ == "__main__":
    main()
