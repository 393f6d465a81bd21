"""RaVL discovery on SpuriousWorld: is the top cluster the background texture its class was tied to?

The model is the StarFT test bed's FLYP model (``workflows/configs/starft_pipeline.yaml``: the
pretrain stage, then FLYP on the biased train split, trained in this process by
:mod:`unspur.clip_testbed`; ``--cache`` keeps both models and shares them with
``seraser_effect.py``). Its val images are cut into regions the way ``unspur regions`` does with
``regions.source: masks`` and ``regions.background: true``: one region per part mask (the
masks stage's ``ground_truth`` segmenter returns exactly the rendered parts) and one for what no
part covers, the background. The regions job's actor embeds them, the discover job clusters and
ranks them (RaVL, METHODS.md 2.2). A region's ``truth`` flag is "lies outside the object"
(``truth_column: object_rle``, ``truth_invert``). Per seed and for the top-ranked cluster, with
``c`` the class it is tied to (:func:`unspur.discovery.attracted_class`) and ``b`` the background
class ``c`` sits on in the train split (rho of its images):

- ``p10_background``: share of its 10 regions nearest the medoid that are background regions;
- ``p10_tied``: share that are background regions of images on ``b``;
- ``top_background``: the background most of those 10 regions show, and whether it is ``b``.

No target: the numbers say whether region-level discovery finds SpuriousWorld's shortcut. Seed s
shifts the worlds' seeds by s and trains with seed s. Last line, means over seeds:

    p10_background=.. p10_tied=.. top_is_tied=..

    python benchmarks/ravl_spuriousworld.py --seeds 3 --workers 3 --threads 1 --cache DIR
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import ravl_flow as flow
import torch

from unspur.clip_testbed import (
    fine_tuned_model,
    map_seeds,
    parse_seed_args,
    pretrained_model,
    recipe,
    stage_world,
)
from unspur.data.spuriousworld import generate_tables
from unspur.models.checkpoint import save_checkpoint

STAGES = ("pretrain_data", "data", "pretrain", "flyp")
KEYS = ("p10_background", "p10_tied", "top_is_tied")
#: regions as `unspur regions` cuts them from the masks stage's part masks, plus the background
SOURCE = {
    "source": "masks",
    "masks": "parts",  # the job reads the masks table; here the part masks are joined in directly
    "min_pixels": 4,
    "background": True,
    "truth_column": "object_rle",
    "truth_invert": True,
}


def region_table(checkpoint: Path, val: pd.DataFrame, parts: pd.DataFrame, out: Path, threads: int) -> Path:
    """The regions job's rows for ``val``, each image's part masks as its mask regions -> Parquet path."""
    rles = parts.groupby("image_id")["rle"].apply(lambda r: json.dumps(list(r)))
    rows = val.assign(mask_rles=val["image_id"].map(rles).fillna(""))
    rows = rows[["image_id", "image", "label", "split", "object_rle", "mask_rles"]]
    return flow.embed_rows(str(checkpoint), rows, SOURCE, out, threads)


def tied_background(train: pd.DataFrame, label: int) -> tuple[str, float]:
    """The background class ``label``'s train images sit on most, and the share that do."""
    counts = train.loc[train["label"] == label, "background"].value_counts()
    return str(counts.index[0]), float(counts.iloc[0] / counts.sum())


def score_top(
    result: dict[str, Any], val: pd.DataFrame, train: pd.DataFrame, classes: list[str]
) -> dict[str, Any]:
    """The top cluster's 10 regions nearest its medoid against the background tied to its class."""
    members = pd.read_parquet(result["members"])
    top = members[members["rank"] == 0].sort_values("order").head(result["precision_k"])
    top = top.merge(val[["image_id", "background"]], on="image_id", how="left")
    tied = int(result["top_tied_class"])
    background, share = tied_background(train, tied) if tied >= 0 else ("", 0.0)
    is_background = top["name"] == "background"
    shown = collections.Counter(top.loc[is_background, "background"]).most_common(1)
    return {
        "tied_class": classes[tied] if tied >= 0 else "none",
        "tied_background": background,
        "train_share": share,
        "p10_background": float(is_background.mean()),
        "p10_tied": float((is_background & (top["background"] == background)).mean()),
        "top_background": shown[0][0] if shown else "none",
        "top_is_tied": float(bool(shown) and shown[0][0] == background),
        "regions": ",".join(top["name"].astype(str)),
    }


def one_seed(job: tuple[dict[str, dict[str, Any]], int, int, Path | None, Path]) -> dict[str, Any]:
    """Train (or read) the seed's FLYP model, embed the val regions, discover, score the top cluster."""
    stages, seed, threads, cache, out = job
    torch.set_num_threads(threads)
    start = time.perf_counter()
    world = stage_world(stages["data"], seed)
    images, parts = generate_tables(world, splits=("train", "val"))
    train, val = (images[images["split"] == s] for s in ("train", "val"))
    model, cfg = pretrained_model(stages, seed, world.classes, cache)
    fine_tuned_model(model, cfg, stages, "flyp", seed, train, val, cache)
    out = out / f"seed{seed}"
    checkpoint = save_checkpoint(out / "flyp", model, cfg)
    val.to_parquet(out / "val_images.parquet")
    table = region_table(checkpoint, val, parts, out / "regions", threads)
    result = flow.discover(str(table), out / "discover", images=str(out / "val_images.parquet"))
    scored = score_top(result, val, train, list(world.classes))
    scored.update(
        seed=seed,
        k=result["k"],
        candidate=result["top_candidate"],
        influence=result["top_influence"],
        figure=(result["figures"] or [""])[0],
        seconds=time.perf_counter() - start,
    )
    return scored


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the models, tables and figures")
    args = parse_seed_args(parser, argv, "STAGE.KEY=VALUE on starft_pipeline.yaml")
    stages = recipe(args.pipeline, args.overrides, STAGES)
    out = args.out or Path(tempfile.mkdtemp(prefix="ravl-spuriousworld-"))
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    runs = map_seeds(one_seed, [(stages, s, args.threads, args.cache, out) for s in seeds], args.workers)
    for r in runs:
        print(
            f"seed={r['seed']} tied_class={r['tied_class']} tied_background={r['tied_background']} "
            f"(train share {r['train_share']:.3f}) top_background={r['top_background']} "
            f"p10_background={r['p10_background']:.2f} p10_tied={r['p10_tied']:.2f} K={r['k']} "
            f"candidate={r['candidate']} influence={r['influence']:.2f} top10={r['regions']} "
            f"figure={r['figure']} t={r['seconds']:.0f}s",
            flush=True,
        )
    means = {k: statistics.fmean(float(r[k]) for r in runs) for k in KEYS}
    print(" ".join(f"{k}={v:.2f}" for k, v in means.items()))
    return means


if __name__ == "__main__":
    main()
