"""The steps of the RaVL pipeline (``workflows/configs/ravl_pipeline.yaml``) in one process, for
the RaVL benchmarks: render digits-grid tables, pretrain / fine-tune a tiny CLIP with the finetune
job (in-process, no Ray Train), embed regions with the regions job's actor (no Ray Data), run the
discover job, evaluate zero-shot. Stage configs come from the pipeline YAML with
``<stage>.<key>=<value>`` overrides, so the benchmarks measure what ``unspur demo ravl`` runs."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from torch.utils.data import DataLoader

from unspur.actors.region_embedder import RegionEmbedder
from unspur.clip_testbed import map_seeds
from unspur.config import (
    DigitsGridConfig,
    DiscoverConfig,
    FinetuneConfig,
    PipelineConfig,
    RegionSourceConfig,
)
from unspur.config.base import apply_overrides, parse_overrides
from unspur.data.digits_grid import generate_tables
from unspur.data.torch_dataset import ImageMaskDataset
from unspur.models.families import input_norm, load_checkpoint
from unspur.models.families.clip import ClipFamily

PIPELINE = Path(__file__).parents[1] / "workflows" / "configs" / "ravl_pipeline.yaml"
IMAGE_COLUMNS = (
    "image_id",
    "image",
    "label",
    "class_name",
    "group",
    "split",
    "caption",
    "caption_descriptive",
)


def recipe(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """The pipeline's stage configs by stage name (overrides applied)."""
    raw = yaml.safe_load(PIPELINE.read_text())
    cfg = PipelineConfig.model_validate(apply_overrides(raw, parse_overrides(overrides)))
    return {s.name: copy.deepcopy(s.config) for s in cfg.stages}


def seeded(stages: dict[str, dict[str, Any]], seed: int) -> dict[str, dict[str, Any]]:
    """The stages of seed ``seed``: both digits-grid sections' seeds shifted by it (seed 0 = the
    pipeline's worlds) and every training stage's ``train.seed`` set to it."""
    out = copy.deepcopy(stages)
    for name in ("pretrain_data", "data"):
        section = out[name]["digits_grid"]
        section["seed"] = int(section.get("seed", 0)) + seed
    for name in ("pretrain", "flyp", "ravl"):
        out[name]["train"] = {**out[name].get("train", {}), "seed": seed}
    return out


def pretrained(stages: dict[str, dict[str, Any]], out: Path, cache: Path | None = None) -> str:
    """The pretrain stage on the pretrain_data world -> model path. With ``cache`` the model folder
    is kept there, keyed by a hash of both stages' configs (training is deterministic per seed, so a
    hit gives the weights a new run would); a hit skips rendering and training."""
    path = None
    if cache is not None:
        key = json.dumps([stages["pretrain_data"], stages["pretrain"]], sort_keys=True, default=str)
        path = Path(cache) / f"ravl-pretrain-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
        if (path / "model").is_dir():
            return str(path / "model")
    images = tables(stages["pretrain_data"]["digits_grid"], out / "pretrain_data")
    model = train(stages["pretrain"], images, out / "pretrain")
    if path is None:
        return model
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    shutil.copytree(model, partial / "model")
    try:
        partial.replace(path)  # atomic: parallel seeds never read a half-copied folder
    except OSError:  # another process stored the same recipe first
        shutil.rmtree(partial)
    return str(path / "model")


def tables(section: dict[str, Any], folder: Path, **update: Any) -> str:
    """Render a digits-grid config (the synth stage's ``digits_grid`` section) -> image table path."""
    cfg = DigitsGridConfig.model_validate({**section, **update})
    images, _, _ = generate_tables(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    images.to_parquet(folder / "images.parquet")
    return str(folder / "images.parquet")


def train(stage: dict[str, Any], images: str, out: Path, **update: Any) -> str:
    """Run the finetune job in-process on ``stage`` (``extends`` already merged) -> model path."""
    from unspur.workflows.finetune.job import run

    data = {**stage, "out": str(out), **update}
    data["data"] = {**data["data"], "images": [images], **update.get("data", {})}
    data["run"] = {**data.get("run", {}), "num_workers": 0, "track": False}
    data.pop("extends", None)
    data.pop("replace", None)
    run(FinetuneConfig.model_validate(data))
    return str(out / "model")


def regions(
    model: str, images: str, out: Path, splits: list[str], source: dict[str, Any], threads: int = 1
) -> str:
    """The region table of ``splits`` under the regions stage's ``regions`` section -> Parquet path."""
    rows = pd.read_parquet(images, columns=["image_id", "image", "label", "split", "marker_rle"])
    return str(embed_rows(model, rows[rows["split"].isin(splits)], source, out, threads))


def embed_rows(model: str, rows: pd.DataFrame, source: dict[str, Any], out: Path, threads: int = 1) -> Path:
    """The regions job's actor over image ``rows`` (its input columns) under a ``regions`` section,
    in chunks of 128 images -> ``out/regions.parquet``."""
    embed = RegionEmbedder(model, RegionSourceConfig.model_validate(source).model_dump(), threads=threads)
    parts = []
    for start in range(0, len(rows), 128):
        chunk = rows.iloc[start : start + 128]
        parts.append(pd.DataFrame(embed({k: chunk[k].to_numpy() for k in chunk.columns})))
    out.mkdir(parents=True, exist_ok=True)
    table = pd.concat(parts, ignore_index=True)
    table["truth"] = table["truth"].astype(object)
    table.to_parquet(out / "regions.parquet")
    return out / "regions.parquet"


def discover(region_table: str, out: Path, level: str = "region", **update: Any) -> dict[str, Any]:
    """The discover job on the val split (no figures, no MLflow)."""
    from unspur.workflows.discover.job import run

    cfg = DiscoverConfig(out=str(out), regions=region_table, split="val", level=level, track=False, **update)
    return run(cfg)


def evaluate(model: str, images: str, split: str = "test") -> dict[str, Any]:
    """Zero-shot accuracy, worst-group accuracy and the worst group's name on ``split``."""
    net, _ = load_checkpoint(model)
    table = pd.read_parquet(images, columns=list(IMAGE_COLUMNS))
    ds = ImageMaskDataset(table[table["split"] == split], None, _size(model), **input_norm(net))
    result = ClipFamily().evaluate(net, DataLoader(ds, batch_size=128))
    return {"acc": float(result["acc"]), "wga": float(result["wga"]), "worst_group": result["worst_group"]}


def _size(model: str) -> int:
    from unspur.models import checkpoint_model_config

    return int(checkpoint_model_config(model).img_size)


def parse_seed_args(parser: argparse.ArgumentParser, seeds: int) -> argparse.Namespace:
    """The RaVL benchmarks' common options after ``parser``'s own (``--seeds`` defaults to
    ``seeds``); a bad override fails here, before any training."""
    parser.add_argument("--seeds", type=int, default=seeds, help="seeds 0..K-1; the last line averages them")
    parser.add_argument("--workers", type=int, default=1, help="seeds run in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per seed")
    parser.add_argument("--cache", type=Path, default=None, help="folder keeping pretrained models")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("overrides", nargs="*", help="<stage>.<key>=<value> on ravl_pipeline.yaml")
    args = parser.parse_args()
    if args.seeds < 1:
        raise SystemExit("--seeds must be >= 1")
    recipe(args.overrides)
    return args


def run_seeds(one_seed: Callable[..., dict[str, float]], args: argparse.Namespace, prefix: str) -> list[dict]:
    """``one_seed(seed, args=, out=)`` for seeds 0..args.seeds-1 (``args.workers`` processes)."""
    out = args.out or Path(tempfile.mkdtemp(prefix=prefix))
    start = time.perf_counter()
    runs = map_seeds(partial(one_seed, args=args, out=out), list(range(args.seeds)), args.workers)
    print(f"{args.seeds} seeds in {time.perf_counter() - start:.0f} s", flush=True)
    return runs
