"""``unspur discover``: RaVL discovery (METHODS.md 2.2) over a region table of ``unspur regions``.

region table -> K-medoids over the region embeddings of ``split`` (K by silhouette) -> per-cluster
per-class gap and influence -> ranked clusters. Pure numpy on the driver (no Ray). Writes into
``out``:

- ``clusters.parquet``: one row per cluster in rank order (``rank``, ``cluster``, ``size``,
  ``candidate``, ``score`` = sum |gap|, ``influence``, per-class ``gap`` / ``acc_in`` / ``acc_out``
  / ``n_in`` / ``n_out`` lists, ``tied_class`` (the class the feature pulls wrong predictions to,
  :func:`unspur.discovery.attracted_class`; without such errors the class of the largest positive gap),
  ``precision_at_k`` against the table's ``truth`` flags where it has them);
- ``members.parquet``: every clustered region with its cluster's ``rank`` and its ``order`` by
  cosine similarity to the medoid (0 = the medoid), ``similarity``, ``truth``;
- ``class_accuracy.parquet``: per top cluster and class, accuracy with (``acc_in``) and without
  (``acc_out``) the feature;
- ``flags.parquet``: every ok region of every split of the table (other splits join their nearest
  medoid): ``image_id``, ``region_id``, ``box``, ``cluster``, ``spurious`` (in the top-ranked
  cluster), ``tied_class`` - what the region-aware loss reads;
- ``metrics.json``, ``report.md`` and ``figures/cluster_<rank>.png`` (a grid of each top
  cluster's regions most similar to its medoid, when ``images`` is set); one MLflow run.

    unspur discover --out runs/discover regions=runs/regions/regions.parquet images=runs/data/images
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from unspur.config import ConfigError, DiscoverConfig, dump_config
from unspur.discovery import ClusterScore, cluster_regions, cosine_distance, discover
from unspur.io import write_json_atomic, write_parquet_atomic
from unspur.metrics import precision_at_k
from unspur.workflows.job import main_for

__all__ = ["CONFIG", "Points", "build", "load_points", "main", "outputs", "run"]

CONFIG = DiscoverConfig


class Points:
    """What is clustered: ``rows`` (the region-table rows, a DataFrame), ``region_image`` (N,)
    index of each row's image in ``images`` (the whole-image rows: ``label``, ``pred``),
    ``embeddings`` (N, D), ``scores`` (N, C)."""

    def __init__(self, rows: pd.DataFrame, images: pd.DataFrame) -> None:
        self.rows = rows.reset_index(drop=True)
        self.images = images.reset_index(drop=True)
        index = {image_id: i for i, image_id in enumerate(self.images["image_id"])}
        self.region_image = self.rows["image_id"].map(index).to_numpy(dtype=np.int64)
        self.embeddings = np.stack(self.rows["embedding"].to_numpy()).astype(np.float64)
        self.scores = np.stack(self.rows["scores"].to_numpy()).astype(np.float64)

    @property
    def truth(self) -> np.ndarray | None:
        flags = self.rows["truth"]
        return None if flags.isna().any() else flags.to_numpy(dtype=bool)


def load_points(cfg: DiscoverConfig, table: pd.DataFrame) -> Points:
    """The ok rows of ``split`` at ``level`` (``region``: region rows; ``image``: whole images)."""
    ok = table[table["status"] == "ok"]
    if cfg.split is not None:
        ok = ok[ok["split"] == cfg.split]
    images = ok[ok["kind"] == "image"]
    rows = ok[ok["kind"] == cfg.level]
    if images.empty or len(rows) < 3:
        raise ConfigError(
            f"region table {cfg.regions}: {len(images)} images and {len(rows)} {cfg.level} rows of split "
            f"{cfg.split!r} with status ok; discovery needs a few (check split and the regions job)"
        )
    rows = rows[rows["image_id"].isin(set(images["image_id"]))]
    return Points(rows, images)


def build(cfg: DiscoverConfig) -> pd.DataFrame:
    """The region table (read, not yet clustered)."""
    if not Path(cfg.regions).exists():
        raise ConfigError(f"region table {cfg.regions} does not exist; run `unspur regions` first")
    return pd.read_parquet(cfg.regions)


def _k_values(cfg: DiscoverConfig, n_classes: int) -> range:
    lo = max(2, int(round(cfg.k_min_factor * n_classes)))
    return range(lo, max(lo + 1, int(round(cfg.k_max_factor * n_classes))))


def _cluster_rows(ranked: list[ClusterScore], points: Points, k: int, at: int) -> pd.DataFrame:
    truth = points.truth
    rows = []
    for rank, c in enumerate(ranked):
        rows.append(
            {
                "rank": rank,
                "cluster": c.cluster,
                "k": k,
                "size": len(c.members),
                "candidate": c.candidate,
                "score": c.score,
                "influence": c.influence,
                "gap": c.gap.tolist(),
                "acc_in": c.acc_in.tolist(),
                "acc_out": c.acc_out.tolist(),
                "n_in": c.n_in.tolist(),
                "n_out": c.n_out.tolist(),
                "tied_class": c.attracted if c.attracted >= 0 else _largest_positive_gap(c.gap),
                "medoid_image_id": str(points.rows["image_id"].iloc[c.medoid]),
                "medoid_region_id": int(points.rows["region_id"].iloc[c.medoid]),
                "precision_at_k": precision_at_k(truth[c.members], at) if truth is not None else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _members(ranked: list[ClusterScore], points: Points) -> pd.DataFrame:
    parts = []
    for rank, c in enumerate(ranked):
        sim = 1.0 - cosine_distance(points.embeddings[c.members], points.embeddings[[c.medoid]])[:, 0]
        part = points.rows.iloc[c.members][["image_id", "region_id", "name", "box", "truth"]].copy()
        part.insert(0, "order", np.arange(len(c.members)))
        part.insert(0, "cluster", c.cluster)
        part.insert(0, "rank", rank)
        part["similarity"] = sim
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _largest_positive_gap(gap: np.ndarray) -> int:
    """The class of the largest positive gap, -1 when no gap is positive."""
    return int(np.where(gap > 0, gap, -np.inf).argmax()) if (gap > 0).any() else -1


def _flags(
    table: pd.DataFrame, points: Points, ranked: list[ClusterScore], tied: int, level: str
) -> pd.DataFrame:
    """Every ok ``level`` row of the table -> its nearest medoid's cluster and the top cluster flag."""
    rows = table[(table["status"] == "ok") & (table["kind"] == level)].reset_index(drop=True)
    medoids = np.array([c.medoid for c in sorted(ranked, key=lambda c: c.cluster)])
    emb = np.stack(rows["embedding"].to_numpy()).astype(np.float64)
    nearest = np.concatenate(
        [
            cosine_distance(emb[i : i + 4096], points.embeddings[medoids]).argmin(1)
            for i in range(0, len(emb), 4096)
        ]
    )
    top = ranked[0].cluster
    return pd.DataFrame(
        {
            "image_id": rows["image_id"],
            "split": rows["split"],
            "region_id": rows["region_id"].astype(np.int64),
            "box": rows["box"],
            "cluster": nearest.astype(np.int64),
            "spurious": nearest == top,
            "tied_class": np.where(nearest == top, tied, -1).astype(np.int64),
        }
    )


def run(cfg: DiscoverConfig) -> dict[str, Any]:
    """Cluster, score, rank; write the tables, figures, report and MLflow run (module docstring)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    table = build(cfg)
    points = load_points(cfg, table)
    n_classes = points.scores.shape[1]
    fit = cluster_regions(points.embeddings, _k_values(cfg, n_classes), cfg.seed, cfg.max_points)
    min_influence = cfg.min_influence if cfg.level == "region" else 0.0  # one region per image: no influence
    ranked = discover(
        points.region_image,
        points.embeddings,
        points.scores,
        points.images["label"].to_numpy(),
        points.images["pred"].to_numpy(),
        fit,
        min_influence,
    )
    clusters = _cluster_rows(ranked, points, fit.k, cfg.precision_k)
    top = clusters.iloc[: cfg.top]
    accuracy = pd.DataFrame(
        [
            {
                "rank": int(r["rank"]),
                "class": c,
                "acc_in": r["acc_in"][c],
                "acc_out": r["acc_out"][c],
                "n_in": r["n_in"][c],
                "n_out": r["n_out"][c],
                "gap": r["gap"][c],
            }
            for _, r in top.iterrows()
            for c in range(n_classes)
        ]
    )
    paths = {
        "clusters": write_parquet_atomic(clusters, out / "clusters.parquet"),
        "members": write_parquet_atomic(_members(ranked, points), out / "members.parquet"),
        "class_accuracy": write_parquet_atomic(accuracy, out / "class_accuracy.parquet"),
        "flags": write_parquet_atomic(
            _flags(table, points, ranked, int(clusters["tied_class"].iloc[0]), cfg.level),
            out / "flags.parquet",
        ),
    }
    truth = points.truth
    members = ranked[0].members
    result: dict[str, Any] = {
        "level": cfg.level,
        "split": cfg.split,
        "n_points": len(points.rows),
        "n_images": len(points.images),
        "k": fit.k,
        "silhouettes": {str(k): v for k, v in fit.silhouettes.items()},
        "n_candidates": int(clusters["candidate"].sum()),
        "top_cluster": int(clusters["cluster"].iloc[0]),
        "top_candidate": bool(clusters["candidate"].iloc[0]),
        "top_score": float(clusters["score"].iloc[0]),
        "top_influence": float(clusters["influence"].iloc[0]),
        "top_tied_class": int(clusters["tied_class"].iloc[0]),
        "precision_at_k": precision_at_k(truth[members], cfg.precision_k) if truth is not None else None,
        "precision_k": cfg.precision_k,
        **{name: str(Path(p).resolve()) for name, p in paths.items()},
    }
    from unspur.workflows.discover.report import cluster_figures, write_report

    figures = cluster_figures(cfg, points, ranked[: cfg.top], out / "figures") if cfg.images else []
    result["figures"] = [str(p.resolve()) for p in figures]
    result["report"] = str(write_report(cfg, result, top, figures, out / "report.md").resolve())
    write_json_atomic(result, out / "metrics.json", indent=2, default=str)
    p10 = result["precision_at_k"]
    print(
        f"discover: {len(points.rows)} {cfg.level}s of {len(points.images)} images, K={fit.k}, "
        f"{result['n_candidates']} candidates; top cluster {result['top_cluster']} (score "
        f"{result['top_score']:.3f}, influence {result['top_influence']:.2f})"
        + (f", P@{cfg.precision_k} {p10:.2f}" if p10 is not None else "")
    )
    if cfg.track:
        _track(cfg, result, figures)
    return result


def _track(cfg: DiscoverConfig, result: dict[str, Any], figures: list[Path]) -> None:
    from unspur import tracking

    with tracking.start_run(cfg.out, cfg.experiment, run_name=f"discover-{cfg.level}"):
        tracking.log_config(cfg)
        keys = ("k", "n_candidates", "top_score", "top_influence", "n_points", "n_images")
        metrics = {k: result[k] for k in keys}
        if result["precision_at_k"] is not None:
            metrics["precision_at_k"] = result["precision_at_k"]
        tracking.log_metrics(metrics)
        tracking.log_dict(result, "metrics.json")
        for path in figures:
            tracking.log_artifact(str(path), "figures")


def main(argv: list[str] | None = None) -> int:
    """``unspur discover --config FILE --out DIR [key.sub=value ...]``."""
    return main_for("discover", DiscoverConfig, run, argv, needs_ray=False)


def outputs(cfg: DiscoverConfig) -> dict[str, Any]:
    """What a pipeline stage of this job offers later stages: ``flags``, ``clusters``, ``metrics``."""
    out = Path(cfg.out).resolve()
    return {
        "flags": str(out / "flags.parquet"),
        "clusters": str(out / "clusters.parquet"),
        "metrics": str(out / "metrics.json"),
    }


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
