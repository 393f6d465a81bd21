"""RaVL mitigation on digits-grid at V=0.9: FLYP vs FLYP + the region-aware loss (``ravl``).

The recipe is the RaVL pipeline's (``workflows/configs/ravl_pipeline.yaml``): per seed, render
the balanced pretraining split and the correlated fine-tuning split (rectangle <-> digit 0 at
Cramer's V 0.9; seed s shifts both worlds' seeds by s and trains with seed s, seed 0 = the
pipeline), pretrain a tiny CLIP (the zero-shot model), FLYP fine-tune it, embed the quadrants of
the val and train images with the FLYP model, discover the spurious cluster on val (the discover
job), and fine-tune the pretrained model again with loss ``ravl`` (FLYP + pull / push on the
quadrants flagged by discovery; same optimisation as FLYP). Both are evaluated zero-shot on
``--split`` (test by default; val to choose a recipe), where the rectangle is independent of the
digit. Per seed one ``seed=.. split=..`` line for the other split, then one for ``--split``;
last line the means over seeds on ``--split``:

    acc_ft=.. wga_ft=.. acc_ravl=.. wga_ravl=..

    python benchmarks/ravl_mitigation.py --seeds 3 --workers 3 --threads 1
    python benchmarks/ravl_mitigation.py --seeds 1 --split val ravl.loss.lambda_push=3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import ravl_flow as flow
import torch

KEYS = ("acc_ft", "wga_ft", "acc_ravl", "wga_ravl")


def one_seed(seed: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """acc / wga of FLYP and RaVL for one seed."""
    torch.set_num_threads(args.threads)
    stages = flow.seeded(flow.recipe(args.overrides), seed)
    stages["data"]["digits_grid"]["cramers_v"] = 0.9
    out = out / f"seed{seed}"
    start = time.perf_counter()
    pretrained = flow.pretrained(stages, out, args.cache)
    images = flow.tables(stages["data"]["digits_grid"], out / "data")
    model_section = stages["pretrain"]["model"]
    flyp = flow.train(stages["flyp"], images, out / "flyp", init_from=pretrained, model=model_section)
    source = stages["regions"]["regions"]
    table = flow.regions(flyp, images, out / "regions", ["val", "train"], source, args.threads)
    found = flow.discover(table, out / "discover")
    ravl_stage = {**stages["flyp"], "loss": stages["ravl"]["loss"]}
    ravl = flow.train(
        ravl_stage,
        images,
        out / "ravl",
        init_from=pretrained,
        model=model_section,
        data={**stages["ravl"].get("data", {}), "regions": found["flags"]},
    )
    result: dict[str, float] = {}
    for split in sorted({"val", "test"} - {args.split}) + [args.split]:  # --split's line last
        ft, rv = flow.evaluate(flyp, images, split), flow.evaluate(ravl, images, split)
        result = {"acc_ft": ft["acc"], "wga_ft": ft["wga"], "acc_ravl": rv["acc"], "wga_ravl": rv["wga"]}
        print(
            f"seed={seed} split={split} "
            + " ".join(f"{k}={result[k]:.3f}" for k in KEYS)
            + f" p10={found['precision_at_k']:.2f} worst_ft={ft['worst_group']} worst_ravl={rv['worst_group']}"
            f" t={time.perf_counter() - start:.0f}s",
            flush=True,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=("val", "test"))
    args = flow.parse_seed_args(parser, seeds=3)
    runs = flow.run_seeds(one_seed, args, "ravl-mitigation-")
    print(" ".join(f"{k}={statistics.mean(r[k] for r in runs):.3f}" for k in KEYS))


if __name__ == "__main__":
    main()
