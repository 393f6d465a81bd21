"""RaVL discovery on digits-grid (METHODS.md 2.4): Precision@10 of the top cluster per Cramer's V.

The recipe is the RaVL pipeline's (``workflows/configs/ravl_pipeline.yaml``): a tiny CLIP is
pretrained once on the balanced digits-grid (the pretrain stage), then for each V a train split
where the red rectangle co-occurs with digit 0 at that V is rendered and the model FLYP
fine-tuned on it; the FLYP model embeds the 4 quadrants of every val image (where the rectangle
is independent of the digit), the discover job clusters them and ranks the clusters, and the top
cluster's regions (sorted by similarity to its medoid) are scored by Precision@10 against the
quadrants that hold the rectangle. The image-level baseline clusters whole-image embeddings with
the same ranking and scores the top cluster's images against "holds the rectangle". Last line:

    p10_v07=.. p10_v08=.. p10_v09=.. p10_v095=.. p10_v099=.. p10_image_v07=.. ... p10_image_v099=..

    python benchmarks/ravl_discovery.py --threads 1
    python benchmarks/ravl_discovery.py --values 0.9 pretrain.train.epochs=2 data.digits_grid.n_train=600
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ravl_flow as flow
import torch


def _key(v: float) -> str:
    return "v" + f"{v:g}".replace("0.", "0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--values",
        type=lambda text: [float(v) for v in text.split(",") if v.strip()],
        default=[0.7, 0.8, 0.9, 0.95, 0.99],
        help="comma list of Cramer's V (a space list would swallow the overrides after it)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="<stage>.<key>=<value> on ravl_pipeline.yaml")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stages = flow.recipe(args.overrides)
    out = args.out or Path(tempfile.mkdtemp(prefix="ravl-discovery-"))
    start = time.perf_counter()
    pre_images = flow.tables(stages["pretrain_data"]["digits_grid"], out / "pretrain_data")
    pretrained = flow.train(stages["pretrain"], pre_images, out / "pretrain")
    print(f"pretrained in {time.perf_counter() - start:.0f} s", flush=True)
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
        table = flow.regions(model, images, out / f"regions_{name}", ["val"], args.threads)
        region = flow.discover(table, out / f"discover_{name}")
        image = flow.discover(table, out / f"discover_image_{name}", level="image")
        test = flow.evaluate(model, images)
        found[f"p10_{name}"] = region["precision_at_k"]
        found[f"p10_image_{name}"] = image["precision_at_k"]
        print(
            f"V={v}: P@10 region {region['precision_at_k']:.2f} (K {region['k']}, candidate "
            f"{region['top_candidate']}, influence {region['top_influence']:.2f}), image "
            f"{image['precision_at_k']:.2f}; FLYP test acc {test['acc']:.3f} wga {test['wga']:.3f}; "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
    keys = [f"p10_{_key(v)}" for v in args.values] + [f"p10_image_{_key(v)}" for v in args.values]
    print(" ".join(f"{k}={found[k]:.2f}" for k in keys))


if __name__ == "__main__":
    main()
