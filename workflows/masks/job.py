"""``unspur masks``: image table + concept bank -> concept masks (Parquet shards of COCO RLE).

Ray Data pipeline: read the image table (only the columns needed) -> drop image ids already
written and repeated ids (a repeated id comes back once, its first row) -> a pool of segmenter
actors (``ActorPoolStrategy``; GPUs / fractional CPUs per actor from the config), each batch
segmented and written as one atomic shard -> per-shard counts back to the driver.

With ``validation.enabled`` (CFT) a first pass segments every candidate concept on P images per
class into ``<out>/validation``, computes occurrence and coverage (``unspur.concept_validation``), writes
``<out>/concepts_validated.json``, and the main pass segments only the kept concepts into
``<out>/masks`` (the training input). A rerun skips finished work: image ids already in a
store, and the whole validation when its bank exists. Images/s, masks/s and a grid of mask
overlays go to MLflow.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import ray

from unspur.actors.segmenters import SegmenterActor
from unspur.concept_validation import concept_statistics, decide, select_validation_images, validated_bank
from unspur.config import MasksConfig, SegmenterConfig, dump_config
from unspur.data.adapters import DatasetError
from unspur.data.images import decode_rgb
from unspur.io import write_json_atomic
from unspur.masks import decode
from unspur.workflows.image_table import RowPlan, plan_rows, read_rows, read_table, table_columns
from unspur.workflows.job import init_ray, main_for
from unspur.workflows.masks.store import ShardStore, resolve_fs
from unspur.workflows.synth.job import render_tables

__all__ = [
    "outputs",
    "CONFIG",
    "MaskPass",
    "Inputs",
    "build",
    "main",
    "plan_pass",
    "prepare",
    "run",
]

CONFIG = MasksConfig
VALIDATED_BANK = "concepts_validated.json"


# ----------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    """Resolved inputs of a run: image table, bank document, concepts per class, segmenter."""

    images: str
    bank: dict[str, Any]
    concepts: dict[str, list[str]]
    segmenter: SegmenterConfig
    columns: list[str]


def _synth_tables(cfg: MasksConfig) -> tuple[str, str]:
    """Render the SpuriousWorld set once into ``<out>/data`` with the synth job (reused by reruns)."""
    paths = render_tables(cfg.synth, Path(cfg.out) / "data", tuple(cfg.synth_splits))
    return paths["images"], paths["parts"]


def _bank_document(cfg: MasksConfig) -> dict[str, Any]:
    if cfg.bank is not None:
        from unspur.concept_bank import load_bank

        return load_bank(cfg.bank).data
    from unspur.concept_bank import BANK_FORMAT

    concepts = {
        cls: [{"concept": c, "kind": "important", "source": "masks-config", "score": 1.0} for c in items]
        for cls, items in (cfg.concepts or {}).items()
    }
    return {
        "format": BANK_FORMAT,
        "classes": list(concepts),
        "meta": {"backend": "masks-config"},
        "concepts": concepts,
        "dropped": {c: [] for c in concepts},
    }


def _per_class(bank: dict[str, Any], kinds: list[str]) -> dict[str, list[str]]:
    return {
        cls: [e["concept"] for e in entries if e.get("kind") in kinds]
        for cls, entries in bank.get("concepts", {}).items()
    }


def prepare(cfg: MasksConfig) -> Inputs:
    """Resolve the image table (generating SpuriousWorld if asked), the bank and the segmenter."""
    segmenter = cfg.segmenter
    if cfg.synth is not None:
        images, parts = _synth_tables(cfg)
        gt = segmenter.ground_truth
        if segmenter.name == "ground_truth" and not (gt.parts or gt.mask_dir):
            segmenter = segmenter.model_copy(update={"ground_truth": gt.model_copy(update={"parts": parts})})
    else:
        images = str(cfg.images)
    fs, path = resolve_fs(images)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise DatasetError(f"image table {images} does not exist; set images to a Parquet file or folder")
    names = table_columns(images)
    missing = [c for c in ("image_id", "class_name") if c not in names]
    if missing or not ({"image", "path"} & set(names)):
        raise DatasetError(f"image table {images} needs image_id, class_name and image or path; has {names}")
    if cfg.splits is not None and "split" not in names:
        raise DatasetError(f"splits={cfg.splits} is set but image table {images} has no split column")
    columns = ["image_id", "class_name"] + [c for c in ("image", "path", "split") if c in names]
    bank = _bank_document(cfg)
    return Inputs(images, bank, _per_class(bank, list(cfg.kinds)), segmenter, columns)


def _table(inputs: Inputs, columns: list[str], flt: Any = None) -> pa.Table:
    return read_table(inputs.images, columns, flt)


# ----------------------------------------------------------------------------- one pass


@dataclass
class MaskPass:
    """One pipeline pass, planned on the driver: the rows to read (:class:`RowPlan`), the
    concepts to segment and the store to write."""

    inputs: Inputs
    concepts: dict[str, list[str]]
    store: str
    rows: RowPlan

    @property
    def counts(self) -> dict[str, int]:
        return self.rows.counts

    @property
    def wanted(self) -> set[str]:
        return self.rows.wanted


def plan_pass(
    inputs: Inputs,
    concepts: dict[str, list[str]],
    store: str,
    splits: list[str] | None = None,
    keep: list[str] | None = None,
) -> MaskPass:
    """Scan ids (one column), find done and repeated ids; repeated ids are read once, first row wins."""
    shards = ShardStore(store)
    shards.remove_partial()
    rows = plan_rows(inputs.images, inputs.columns, shards.done_ids(), splits, keep)
    return MaskPass(inputs, concepts, store, rows)


class MaskShardWriter:
    """Segmenter actor + shard writer: segments a batch, writes it as one atomic shard, returns counts."""

    def __init__(self, segmenter: dict[str, Any], concepts: dict[str, list[str]], store: str) -> None:
        self.segment = SegmenterActor(segmenter, concepts)
        self.store = ShardStore(store)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        rows = self.segment(batch)
        seconds = time.perf_counter() - start
        if len(rows["image_id"]):
            self.store.write(rows)
        status = Counter(rows["status"].tolist())
        error_images = len({i for i, s in zip(rows["image_id"], rows["status"], strict=True) if s == "error"})
        out = {
            "images": len(batch["image_id"]),
            "rows": len(rows["image_id"]),
            "ok": status["ok"],
            "empty": status["empty"],
            "error": status["error"],
            "error_images": error_images,
        }
        return {**{k: np.array([v], dtype=np.int64) for k, v in out.items()}, "seconds": np.array([seconds])}


def build(cfg: MasksConfig, mask_pass: MaskPass | None = None) -> ray.data.Dataset:
    """The unexecuted pipeline of one pass (default: the main pass over every image, all concepts)."""
    if mask_pass is None:
        inputs = prepare(cfg)
        mask_pass = plan_pass(inputs, inputs.concepts, str(Path(cfg.out) / "masks"), cfg.splits)
    inputs, c = mask_pass.inputs, cfg.compute
    ds = read_rows(mask_pass.rows)
    return ds.map_batches(
        MaskShardWriter,
        fn_constructor_kwargs={
            "segmenter": inputs.segmenter.model_dump(mode="json"),
            "concepts": mask_pass.concepts,
            "store": mask_pass.store,
        },
        compute=ray.data.ActorPoolStrategy(min_size=c.min_actors, max_size=c.max_actors),
        batch_size=c.batch_size,
        num_cpus=c.num_cpus,
        num_gpus=c.num_gpus,
    )


def execute(cfg: MasksConfig, mask_pass: MaskPass) -> dict[str, Any]:
    """Run one pass; returns its counts and throughput."""
    totals: Counter[str] = Counter()
    seconds = 0.0
    start = time.perf_counter()
    if mask_pass.counts["to_do"] > 0:
        for row in build(cfg, mask_pass).iter_rows():
            totals.update({k: int(v) for k, v in row.items() if k != "seconds"})
            seconds += float(row["seconds"])
    wall = time.perf_counter() - start
    summary: dict[str, Any] = {
        **mask_pass.counts,
        **{k: totals[k] for k in ("images", "rows", "ok", "empty", "error", "error_images")},
    }
    summary["wall_s"] = round(wall, 3)
    summary["images_per_s"] = totals["images"] / wall if totals["images"] else 0.0
    summary["masks_per_s"] = totals["ok"] / wall if totals["images"] else 0.0
    summary["actor_images_per_s"] = totals["images"] / seconds if seconds > 0 else 0.0
    summary["missing_images"] = len(mask_pass.wanted - ShardStore(mask_pass.store).done_ids())
    summary["complete"] = summary["missing_images"] == 0
    return summary


# ----------------------------------------------------------------------------- validation


def _object_masks(inputs: Inputs, ids: list[str]) -> dict[str, Any]:
    if "object_rle" not in table_columns(inputs.images):
        return {}
    table = _table(inputs, ["image_id", "object_rle"], pc.field("image_id").isin(pa.array(ids, pa.string())))
    return {
        i: r
        for i, r in zip(
            table.column("image_id").to_pylist(), table.column("object_rle").to_pylist(), strict=True
        )
        if r is not None
    }


def validate(
    cfg: MasksConfig, inputs: Inputs, main_store: str
) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Validation pass (see the module docstring) -> (kept concepts per class, summary).

    A finished validation (its bank exists) is reused as it is. The validation images' rows of
    kept concepts are copied into ``main_store`` so the main pass does not segment them again.
    """
    out, v = Path(cfg.out), cfg.validation
    bank_path = out / VALIDATED_BANK
    if bank_path.is_file():
        bank = json.loads(bank_path.read_text(encoding="utf-8"))
        return _per_class(bank, list(cfg.kinds)), {"reused": True, **_bank_counts(bank)}
    scan = _table(inputs, ["image_id", "class_name"] + (["split"] if cfg.splits is not None else []))
    if cfg.splits is not None:
        scan = scan.filter(pc.is_in(scan["split"], value_set=pa.array(cfg.splits, pa.string())))
    chosen = select_validation_images(
        scan.column("image_id").to_pylist(),
        scan.column("class_name").to_pylist(),
        v.images_per_class,
        wanted=[c for c, items in inputs.concepts.items() if items],
    )
    ids = sorted(i for members in chosen.values() for i in members)
    val_store = str(out / "validation")
    summary = execute(cfg, plan_pass(inputs, inputs.concepts, val_store, cfg.splits, keep=ids))
    rows = ShardStore(val_store).read(ids=ids)
    stats = decide(
        concept_statistics(rows.to_pylist(), _object_masks(inputs, ids)), v.min_occurrence, v.min_coverage
    )
    params = {
        "images_per_class": v.images_per_class,
        "min_occurrence": v.min_occurrence,
        "min_coverage": v.min_coverage,
        "segmenter": inputs.segmenter.name,
        "kinds": list(cfg.kinds),
        "images": {cls: len(members) for cls, members in chosen.items()},
    }
    bank = validated_bank(inputs.bank, stats, params)
    kept = _per_class(bank, list(cfg.kinds))
    main = ShardStore(main_store)
    pairs = {(cls, c) for cls, items in kept.items() for c in items}
    done = main.done_ids()
    copy = [
        r
        for r in rows.to_pylist()
        if r["image_id"] not in done and ((r["class_name"], r["concept"]) in pairs or r["concept"] == "")
    ]
    if copy:
        main.write({name: [r[name] for r in copy] for name in rows.column_names})
    write_json_atomic(bank, bank_path, indent=2, default=str)
    return kept, {"reused": False, "pass": summary, **_bank_counts(bank)}


def _bank_counts(bank: dict[str, Any]) -> dict[str, Any]:
    val = bank.get("validation", {})
    validated = {s["class_name"] for s in val.get("concepts", [])}
    kept = {s["class_name"] for s in val.get("concepts", []) if s["kept"]}
    return {
        "kept": val.get("kept", 0),
        "dropped": val.get("dropped", 0),
        "classes_without_concepts": sorted(validated - kept),
    }


# ----------------------------------------------------------------------------- report


def _overlays(cfg: MasksConfig, inputs: Inputs, store: str) -> Any:
    """A figure of up to ``cfg.overlays`` images with their ok masks, or None."""
    from unspur.workflows.masks.report import overlay_grid

    shards = ShardStore(store)
    index = shards.read(columns=["image_id", "status"])
    ok = index.filter(pc.equal(index["status"], "ok")).column("image_id").to_pylist()
    ids = sorted(set(ok))[: cfg.overlays]
    if not ids:
        return None
    rows = [r for r in shards.read(ids=ids).to_pylist() if r["status"] == "ok"]
    images = _table(
        inputs,
        [c for c in inputs.columns if c in ("image_id", "image", "path", "class_name")],
        pc.field("image_id").isin(pa.array(ids, pa.string())),
    ).to_pylist()
    by_id = {r["image_id"]: r for r in images}
    samples = []
    for image_id in ids:
        src = by_id.get(image_id)
        try:
            image = decode_rgb(src.get("image"), src.get("path")) if src else None
        except ValueError:
            image = None
        if image is None:
            continue
        masks = [(r["concept"], decode(r["rle"])) for r in rows if r["image_id"] == image_id]
        samples.append((f"{image_id} ({src['class_name']})", image, masks))
    return overlay_grid(samples) if samples else None


def _track(cfg: MasksConfig, summary: dict[str, Any], figure: Any, bank_path: Path | None) -> None:
    from unspur import tracking

    with tracking.start_run(cfg.out, cfg.experiment, run_name=f"masks-{cfg.segmenter.name}"):
        tracking.log_config(cfg)
        tracking.log_metrics(summary)
        tracking.log_dict(summary, "summary.json")
        if figure is not None:
            tracking.log_figure(figure, "figures/mask_overlays.png")
        if bank_path is not None and bank_path.is_file():
            tracking.log_dict(json.loads(bank_path.read_text(encoding="utf-8")), VALIDATED_BANK)


def run(cfg: MasksConfig) -> dict[str, Any]:
    """Check the inputs, then (joining or starting Ray) validation (if enabled) and the main pass;
    writes summary.json and the overlay grid."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    inputs = prepare(cfg)  # a missing table or column is refused here, before Ray
    init_ray()
    store = str(out / "masks")
    summary: dict[str, Any] = {"segmenter": inputs.segmenter.name}
    concepts = inputs.concepts
    if cfg.validation.enabled:
        concepts, summary["validation"] = validate(cfg, inputs, store)
    summary.update(execute(cfg, plan_pass(inputs, concepts, store, cfg.splits)))
    summary["masks"] = store
    figure = _overlays(cfg, inputs, store) if cfg.overlays else None
    if figure is not None:
        figure.savefig(out / "mask_overlays.png", dpi=100)
    write_json_atomic(summary, out / "summary.json", indent=2, default=str)
    if cfg.track:
        _track(cfg, summary, figure, out / VALIDATED_BANK if cfg.validation.enabled else None)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``unspur masks --config FILE --out DIR [key.sub=value ...]``."""
    return main_for("masks", MasksConfig, run, argv, needs_ray=False)


def outputs(cfg: MasksConfig) -> dict[str, Any]:
    """What a pipeline stage of this job offers later stages: ``masks`` (the masks table, the
    training input) and ``concepts`` (the validated concepts JSON)."""
    out = Path(cfg.out).resolve()
    return {"masks": str(out / "masks"), "concepts": str(out / "concepts_validated.json")}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
