"""``unspur regions``: RaVL's region embedding (METHODS.md 2.1) as a resumable Ray Data stage.

image table (+ masks table) + CLIP checkpoint -> region table (Parquet). Ray Data pipeline: read
the image table (the columns needed, rows of ``splits``) -> drop image ids already written and
repeated ids (first row wins) -> for mask regions, attach each image's ok masks -> a pool of
:class:`unspur.actors.region_embedder.RegionEmbedder` actors (``ActorPoolStrategy``, fractional
CPUs / GPUs from ``compute``), each batch embedded and written as one atomic shard of
``<out>/regions/`` -> per-shard counts back to the driver.

A rerun (after a kill, say) skips the images a finished shard holds. The finished store becomes
``<out>/regions.parquet`` (ARCHITECTURE.md regions contract: ``image_id``, ``split``, ``label``,
``region_id`` (-1 = the whole image), ``kind``, ``name``, ``box``, ``embedding``, ``scores``,
``pred``, ``truth``, ``status``, ``error``) and ``summary.json``.

    unspur regions --out runs/regions checkpoint=runs/flyp/model images=runs/data/images
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from unspur.actors.region_embedder import RegionEmbedder
from unspur.config import ConfigError, RegionsConfig, dump_config
from unspur.io import write_json_atomic, write_parquet_atomic
from unspur.workflows.image_table import (
    RowPlan,
    attach_masks,
    mask_index,
    plan_rows,
    read_rows,
    table_columns,
)
from unspur.workflows.job import main_for
from unspur.workflows.masks.store import ShardStore

__all__ = ["CONFIG", "REGION_SCHEMA", "build", "columns", "main", "outputs", "run"]

CONFIG = RegionsConfig
#: Parquet schema of a region shard (ARCHITECTURE.md regions contract)
REGION_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("split", pa.string()),
        ("label", pa.int64()),
        ("region_id", pa.int64()),
        ("kind", pa.string()),
        ("name", pa.string()),
        ("box", pa.list_(pa.int32())),
        ("rle", pa.string()),
        ("embedding", pa.list_(pa.float32())),
        ("scores", pa.list_(pa.float32())),
        ("pred", pa.int64()),
        ("truth", pa.bool_()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)


def columns(cfg: RegionsConfig) -> list[str]:
    """The image-table columns a run reads; raises ConfigError for a table that cannot serve."""
    names = table_columns(cfg.images)
    if "image_id" not in names or "label" not in names or not ({"image", "path"} & set(names)):
        raise ConfigError(f"image table {cfg.images} needs image_id, label and image or path; has {names}")
    if cfg.splits is not None and "split" not in names:
        raise ConfigError(f"splits={cfg.splits} is set but image table {cfg.images} has no split column")
    truth = cfg.regions.truth_column
    if truth is not None and truth not in names:
        raise ConfigError(f"regions.truth_column {truth!r} is not a column of {cfg.images} ({names})")
    extra = [c for c in ("image", "path", "split") if c in names]
    return ["image_id", "label", *extra, *([truth] if truth else [])]


def prepare(cfg: RegionsConfig) -> list[str]:
    """Check the checkpoint (a clip model with classes) and the image table -> columns to read."""
    from unspur.models import checkpoint_model_config

    model_cfg = checkpoint_model_config(cfg.checkpoint)
    if getattr(model_cfg, "family", "timm") != "clip" or not model_cfg.classes:
        raise ConfigError(
            f"checkpoint {cfg.checkpoint} must be a clip-family model with classes (model.classes)"
        )
    return columns(cfg)


class RegionShardWriter:
    """Region embedder + shard writer: embeds a batch, writes it as one atomic shard, returns counts."""

    def __init__(
        self,
        checkpoint: str,
        regions: dict[str, Any],
        temperature: float,
        store: str,
        device: str,
        threads: int,
    ):
        self.embed = RegionEmbedder(checkpoint, regions, temperature, device, threads)
        self.store = ShardStore(store, REGION_SCHEMA)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        rows = self.embed(batch)
        if len(rows["image_id"]):
            self.store.write({k: list(rows[k]) for k in REGION_SCHEMA.names})
        kinds = Counter(zip(rows["kind"].tolist(), rows["status"].tolist(), strict=True))
        counts = {
            "images": len(batch["image_id"]),
            "regions": kinds[("region", "ok")],
            "errors": kinds[("image", "error")],
        }
        seconds = time.perf_counter() - start
        return {**{k: np.array([v], np.int64) for k, v in counts.items()}, "seconds": np.array([seconds])}


def _store(cfg: RegionsConfig) -> ShardStore:
    return ShardStore(str(Path(cfg.out) / "regions"), REGION_SCHEMA)


def build(cfg: RegionsConfig, plan: RowPlan | None = None) -> ray.data.Dataset:
    """The unexecuted pipeline over the images not yet written (default: planned here)."""
    store = _store(cfg)
    if plan is None:
        store.remove_partial()
        plan = plan_rows(cfg.images, prepare(cfg), store.done_ids(), cfg.splits)
    ds = read_rows(plan)
    if cfg.regions.source == "masks":
        todo = plan.wanted - store.done_ids()
        index = mask_index(cfg.regions.masks, todo)
        ds = ds.map_batches(
            attach_masks, batch_format="pyarrow", fn_kwargs={"index": index, "source": cfg.regions.masks}
        )
    c = cfg.compute
    return ds.map_batches(
        RegionShardWriter,
        fn_constructor_kwargs={
            "checkpoint": cfg.checkpoint,
            "regions": cfg.regions.model_dump(mode="json"),
            "temperature": cfg.temperature,
            "store": store.uri,
            "device": c.device,
            "threads": c.threads or max(1, int(c.num_cpus)),
        },
        compute=ray.data.ActorPoolStrategy(min_size=c.min_actors, max_size=c.max_actors),
        batch_size=c.batch_size,
        batch_format="numpy",
        num_cpus=c.num_cpus,
        num_gpus=c.num_gpus,
    )


def run(cfg: RegionsConfig) -> dict[str, Any]:
    """Embed the regions of every image not yet written, then write regions.parquet and summary.json."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    store = _store(cfg)
    store.remove_partial()
    plan = plan_rows(cfg.images, prepare(cfg), store.done_ids(), cfg.splits)
    totals: Counter[str] = Counter()
    start = time.perf_counter()
    if plan.counts["to_do"] > 0:
        for row in build(cfg, plan).iter_rows():
            totals.update({k: int(v) for k, v in row.items() if k != "seconds"})
    wall = time.perf_counter() - start
    table = store.read(ids=plan.wanted).sort_by([("image_id", "ascending"), ("region_id", "ascending")])
    path = write_parquet_atomic(table, out / "regions.parquet")
    summary = {**plan.counts, **{k: totals[k] for k in ("images", "regions", "errors")}}
    summary.update(
        wall_s=round(wall, 3),
        images_per_s=totals["images"] / wall if totals["images"] and wall > 0 else 0.0,
        missing_images=len(plan.wanted - store.done_ids()),
        n_rows=table.num_rows,
        n_error_rows=int(sum(s == "error" for s in table.column("status").to_pylist())),
        regions_table=str(path.resolve()),
    )
    summary["complete"] = summary["missing_images"] == 0
    write_json_atomic(summary, out / "summary.json", indent=2)
    print(
        f"regions: {totals['images']} images embedded this run ({plan.counts['already_done']} before), "
        f"{table.num_rows} rows, error rows {summary['n_error_rows']}"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """``unspur regions --config FILE --out DIR [key.sub=value ...]``."""
    return main_for("regions", RegionsConfig, run, argv, check=prepare)


def outputs(cfg: RegionsConfig) -> dict[str, Any]:
    """What a pipeline stage of this job offers later stages: ``regions`` (the region table)."""
    return {"regions": str(Path(cfg.out).resolve() / "regions.parquet")}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
