"""The steps of the RaVL pipeline (``workflows/configs/ravl_pipeline.yaml``) in one process, for
the RaVL benchmarks: render digits-grid tables, pretrain / fine-tune a tiny CLIP with the finetune
job (in-process, no Ray Train), embed regions with the regions job's actor (no Ray Data), run the
discover job, evaluate zero-shot. Stage configs come from the pipeline YAML with
``<stage>.<key>=<value>`` overrides, so the benchmarks measure what ``unspur demo ravl`` runs."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from torch.utils.data import DataLoader

from unspur.actors.region_embedder import RegionEmbedder
from unspur.config import DigitsGridConfig, DiscoverConfig, FinetuneConfig, PipelineConfig
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


def regions(model: str, images: str, out: Path, splits: list[str], threads: int = 1) -> str:
    """The region table of ``splits`` (2x2 grid, truth = the marker) -> Parquet path."""
    embed = RegionEmbedder(
        model,
        {"source": "grid", "grid": 2, "truth_column": "marker_rle", "min_overlap": 0.5},
        threads=threads,
    )
    rows = pd.read_parquet(images, columns=["image_id", "image", "label", "split", "marker_rle"])
    rows = rows[rows["split"].isin(splits)]
    parts = []
    for start in range(0, len(rows), 128):
        chunk = rows.iloc[start : start + 128]
        parts.append(pd.DataFrame(embed({k: chunk[k].to_numpy() for k in chunk.columns})))
    out.mkdir(parents=True, exist_ok=True)
    table = pd.concat(parts, ignore_index=True)
    table["truth"] = table["truth"].astype(object)
    table.to_parquet(out / "regions.parquet")
    return str(out / "regions.parquet")


def discover(region_table: str, out: Path, level: str = "region", **update: Any) -> dict[str, Any]:
    """The discover job on the val split (no figures, no MLflow)."""
    from unspur.workflows.discover.job import run

    cfg = DiscoverConfig(out=str(out), regions=region_table, split="val", level=level, track=False, **update)
    return run(cfg)


def evaluate(model: str, images: str, split: str = "test") -> dict[str, float]:
    """Zero-shot accuracy and worst-group accuracy on ``split``."""
    net, _ = load_checkpoint(model)
    table = pd.read_parquet(images, columns=list(IMAGE_COLUMNS))
    ds = ImageMaskDataset(table[table["split"] == split], None, _size(model), **input_norm(net))
    result = ClipFamily().evaluate(net, DataLoader(ds, batch_size=128))
    return {"acc": float(result["acc"]), "wga": float(result["wga"])}


def _size(model: str) -> int:
    from unspur.models import checkpoint_model_config

    return int(checkpoint_model_config(model).img_size)
