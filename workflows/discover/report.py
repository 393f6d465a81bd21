"""The discover job's figures (a grid of each top cluster's regions) and ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unspur.config import DiscoverConfig
from unspur.discovery import ClusterScore
from unspur.regions import Region, crop_region
from unspur.workflows.image_table import read_table

__all__ = ["cluster_figures", "write_report"]


def _crops(cfg: DiscoverConfig, rows: pd.DataFrame) -> list[np.ndarray]:
    """The crops of ``rows`` (image_id, box, rle) from the image table: a mask region (its ``rle``
    set) shows its box with the pixels outside the mask black, as it was embedded."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from unspur.data.torch_dataset import load_image
    from unspur.masks import decode, resize_mask

    ids = sorted(set(rows["image_id"]))
    table = read_table(
        cfg.images, ["image_id", "image"], pc.field("image_id").isin(pa.array(ids, pa.string()))
    )
    by_id = {r["image_id"]: r for r in table.to_pylist()}
    crops = []
    rles = rows["rle"] if "rle" in rows else [""] * len(rows)  # tables written before masks were kept
    for image_id, box, rle in zip(rows["image_id"], rows["box"], rles, strict=True):
        image = load_image(by_id[image_id])
        mask = resize_mask(decode(json.loads(rle)), image.shape[:2]) if rle else None
        crops.append(crop_region(image, Region(tuple(int(v) for v in box), mask)))
    return crops


def cluster_figures(cfg: DiscoverConfig, points: Any, ranked: list[ClusterScore], folder: Path) -> list[Path]:
    """One PNG per cluster of ``ranked``: its ``figure_regions`` regions most similar to the medoid
    (medoid first), titled with the image id and the ground truth where known."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, c in enumerate(ranked):
        rows = points.rows.iloc[c.members[: cfg.figure_regions]]
        if rows.empty:
            continue
        crops = _crops(cfg, rows)
        cols = min(8, len(crops))
        nrows = (len(crops) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(1.6 * cols, 1.8 * nrows), squeeze=False)
        for ax in axes.ravel():
            ax.axis("off")
        for ax, crop, (_, row) in zip(axes.ravel(), crops, rows.iterrows(), strict=False):
            ax.imshow(crop, interpolation="nearest")
            truth = "" if pd.isna(row["truth"]) else (" *" if row["truth"] else "")
            ax.set_title(f"{row['image_id']}{truth}", fontsize=6)
        fig.suptitle(
            f"rank {rank}: cluster {c.cluster} (score {c.score:.3f}, influence {c.influence:.2f})", fontsize=8
        )
        fig.tight_layout()
        path = folder / f"cluster_{rank}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(
    cfg: DiscoverConfig, result: dict[str, Any], top: pd.DataFrame, figures: list[Path], path: Path
) -> Path:
    """``report.md``: the run's numbers, the top clusters' per-class accuracy with / without the
    feature, and their figures."""
    lines = [
        f"# RaVL discovery ({cfg.level} level, split {cfg.split})",
        "",
        f"{result['n_points']} {cfg.level}s of {result['n_images']} images; K = {result['k']} by silhouette; "
        f"{result['n_candidates']} candidate clusters.",
    ]
    if result["precision_at_k"] is not None:
        lines.append(f"Top cluster Precision@{cfg.precision_k}: {result['precision_at_k']:.2f}.")
    for _, row in top.iterrows():
        rank = int(row["rank"])
        lines += [
            "",
            f"## Rank {rank}: cluster {row['cluster']} ({row['size']} regions, candidate {row['candidate']}, "
            f"score {row['score']:.3f}, influence {row['influence']:.2f}, tied class {row['tied_class']})",
            "",
            "| class | n with | acc with | n without | acc without | gap |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c, (gap, a_in, a_out, n_in, n_out) in enumerate(
            zip(row["gap"], row["acc_in"], row["acc_out"], row["n_in"], row["n_out"], strict=True)
        ):
            lines.append(f"| {c} | {n_in} | {a_in:.3f} | {n_out} | {a_out:.3f} | {gap:+.3f} |")
        fig = next((f for f in figures if f.name == f"cluster_{rank}.png"), None)
        if fig is not None:
            lines += ["", f"![cluster {rank}](figures/{fig.name})"]
    path.write_text("\n".join(lines) + "\n")
    return path
