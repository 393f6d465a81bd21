"""RaVL discovery on digits-grid (METHODS.md 2.4): Precision@10 of the top cluster per Cramer's V.

The recipe is the RaVL pipeline's (``workflows/configs/ravl_pipeline.yaml``): per seed a tiny
CLIP is pretrained once on the balanced digits-grid (the pretrain stage), then for each V a train
split where the red rectangle co-occurs with digit 0 at that V is rendered and the model FLYP
fine-tuned on it; the FLYP model embeds the 4 quadrants of every val image (where the rectangle
is independent of the digit), the discover job clusters them and ranks the clusters, and the top
cluster's regions (sorted by similarity to its medoid) are scored by Precision@10 against the
quadrants that hold the rectangle. The image-level baseline clusters whole-image embeddings with
the same ranking and scores the top cluster's images against "holds the rectangle". Seed s shifts
both worlds' seeds by s and trains with seed s (seed 0 = the pipeline). One line per (seed, V),
one ``seed=..`` line per seed, and last the means over seeds:

    p10_v07=.. p10_v08=.. p10_v09=.. p10_v095=.. p10_v099=.. p10_image_v07=.. ... p10_image_v099=..

    python benchmarks/ravl_discovery.py --seeds 3 --workers 3 --threads 1
    python benchmarks/ravl_discovery.py --values 0.9 pretrain.train.epochs=2 data.digits_grid.n_train=600
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import ravl_flow as flow
import torch


def _key(v: float) -> str:
    return "v" + f"{v:g}".replace("0.", "0")


def one_seed(seed: int, args: argparse.Namespace, out: Path) -> dict[str, float]:
    """P@10 (region and image level) per V for one seed."""
    torch.set_num_threads(args.threads)
    stages = flow.seeded(flow.recipe(args.overrides), seed)
    out = out / f"seed{seed}"
    start = time.perf_counter()
    pretrained = flow.pretrained(stages, out, args.cache)
    found: dict[str, float] = {}
    for v in args.values:
        name = _key(v)
        images = flow.tables(stages["data"]["digits_grid"], out / f"data_{name}", cramers_v=v)
        model = flow.train(
            stages["flyp"],
            images,
            out / f"flyp_{name}",
            init_from=pretrained,
            model=stages["pretrain"]["model"],
        )
        source = stages["regions"]["regions"]
        table = flow.regions(model, images, out / f"regions_{name}", ["val"], source, args.threads)
        region = flow.discover(table, out / f"discover_{name}")
        image = flow.discover(table, out / f"discover_image_{name}", level="image")
        test = flow.evaluate(model, images)
        found[f"p10_{name}"] = region["precision_at_k"]
        found[f"p10_image_{name}"] = image["precision_at_k"]
        print(
            f"seed={seed} V={v}: P@10 region {region['precision_at_k']:.2f} (K {region['k']}, candidate "
            f"{region['top_candidate']}, influence {region['top_influence']:.2f}), image "
            f"{image['precision_at_k']:.2f}; FLYP test acc {test['acc']:.3f} wga {test['wga']:.3f}; "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
    print(f"seed={seed} " + " ".join(f"{k}={found[k]:.2f}" for k in _keys(args.values)), flush=True)
    return found


def _keys(values: list[float]) -> list[str]:
    return [f"p10_{_key(v)}" for v in values] + [f"p10_image_{_key(v)}" for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--values",
        type=lambda text: [float(v) for v in text.split(",") if v.strip()],
        default=[0.7, 0.8, 0.9, 0.95, 0.99],
        help="comma list of Cramer's V (a space list would swallow the overrides after it)",
    )
    args = flow.parse_seed_args(parser, seeds=1)
    runs = flow.run_seeds(one_seed, args, "ravl-discovery-")
    print(" ".join(f"{k}={statistics.mean(r[k] for r in runs):.2f}" for k in _keys(args.values)))


if __name__ == "__main__":
    main()
