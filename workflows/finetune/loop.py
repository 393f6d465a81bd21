"""The training loop of ``unspur finetune``, run by every Ray Train worker or in-process.

One loop, two sessions: :class:`RaySession` (inside a TorchTrainer: DDP model, distributed
sampler, ``ray.train.report`` checkpoints, ``ray.train.get_checkpoint`` on resume) and
:class:`LocalSession` (``run.num_workers`` 0: plain model, checkpoints written to
``storage_path/name/checkpoint_<epoch>``, the latest one picked up on rerun). Rank 0 evaluates (each
evaluated epoch's record holds ``eval``, that epoch's metrics, and ``kept``, those of the weights
``run.select`` keeps so far), writes checkpoints (``model.safetensors`` + resolved ``config.yaml`` + ``train_state.pt``) and
logs to MLflow; every rank reports each epoch (Ray Train needs the same number of reports).
"""

from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from unspur.config import FinetuneConfig
from unspur.data.adapters import sort_rows
from unspur.data.torch_dataset import ImageMaskDataset, few_shot
from unspur.losses import get_loss
from unspur.models import load_weights, read_extra, save_checkpoint, unwrap
from unspur.models.families import family_of, input_norm
from unspur.models.resume import restore_state, write_state
from unspur.spurious_templates import run_templates
from unspur.training import (
    apply_trainable,
    improves,
    make_optimizer,
    make_scheduler,
    seed_everything,
    selection_note,
    train_one_epoch,
)
from unspur.workflows.finetune.report import Tracker, relevance_figure
from unspur.workflows.finetune.sessions import RaySession

__all__ = ["SUMMARY", "load_tables", "run_loop", "train_loop_per_worker", "with_classes"]

SUMMARY = "finetune_summary.json"
SELECTED = "selected"  # <out>/selected: the best weights so far under run.select


# --- data and model -------------------------------------------------------------------------


def load_tables(tables: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Read the image table(s) and the masks / parts table named by ``tables``."""
    images = pd.concat([pd.read_parquet(p) for p in tables["images"]], ignore_index=True)
    masks = pd.read_parquet(tables["masks"]) if tables.get("masks") else None
    return sort_rows(images), (sort_rows(masks) if masks is not None else None)  # not shard order


def _split(images: pd.DataFrame, split: str, what: str) -> pd.DataFrame:
    if "split" not in images.columns:
        raise ValueError(
            f"the image table has no 'split' column, so the {what} split {split!r} cannot be "
            "selected; add a split column (train/val/test)"
        )
    rows = images[images["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(
            f"the {what} split {split!r} is empty; splits present: {sorted(images['split'].unique())}"
        )
    return rows


def datasets(
    cfg: FinetuneConfig, tables: dict[str, Any], norm: dict[str, tuple[float, ...]] | None = None
) -> tuple[ImageMaskDataset, ImageMaskDataset]:
    """(train dataset, few-shot subset if enabled; evaluation dataset over every class).

    ``norm``: ``{"mean", "std"}`` of the model's inputs (default: the dataset's ImageNet stats).
    """
    images, masks = load_tables(tables)
    train = _split(images, cfg.data.train_split, "training")
    test = _split(images, cfg.data.eval_split, "evaluation")
    if cfg.data.eval_max_images is not None:
        test = test.iloc[: cfg.data.eval_max_images]
    n_labels = int(images["label"].max()) + 1
    if n_labels > cfg.model.num_classes:
        raise ValueError(
            f"the image table has labels up to {n_labels - 1} but model.num_classes is "
            f"{cfg.model.num_classes}; set model.num_classes={n_labels}"
        )
    if cfg.fewshot.enabled:
        fs = cfg.fewshot
        train = few_shot(train, fs.per_class, fs.class_fraction, fs.seed)
    size, norm = cfg.model.img_size, norm or {}
    fields = get_loss(cfg.loss.name).batch_keys  # what the loss reads: masks only if it needs them
    tokenizer, templates = None, None
    if "spurious_tokens" in fields:  # StarFT: a concept bank's templates or the built-in ones
        templates = run_templates(cfg.data.spurious.bank, cfg.data.spurious.kinds)
    if {"tokens", "spurious_tokens"} & set(fields):  # captions, by the model family's tokenizer
        family = family_of(cfg.model)
        if not hasattr(family, "tokenizer"):
            raise ValueError(
                f"loss {cfg.loss.name!r} reads caption tokens; model family {family.name!r} has no tokenizer"
            )
        tokenizer = family.tokenizer(cfg.model)
    train_ds = ImageMaskDataset(
        train,
        masks,
        size,
        train_aug=cfg.train.augment,
        fields=fields,
        tokenizer=tokenizer,
        caption_column=cfg.data.caption_column,
        spurious_templates=templates,
        region_flags=pd.read_parquet(cfg.data.regions) if "regions" in fields else None,
        region_view=cfg.data.region_view,
        region_paste=cfg.data.region_paste,
        **norm,
    )
    return (
        train_ds,
        ImageMaskDataset(test, masks, size, **norm),
    )


def with_classes(cfg: FinetuneConfig, tables: dict[str, Any]) -> FinetuneConfig:
    """``cfg`` with a clip model's empty ``model.classes`` filled from the image table: the
    ``class_name`` of each label, in label order (zero-shot head, ``num_classes``). Other
    families, and classes the config names, are left as they are."""
    if getattr(cfg.model, "family", "timm") != "clip" or cfg.model.classes:
        return cfg
    columns = ["label", "class_name"]
    names = pd.concat([pd.read_parquet(p, columns=columns) for p in tables["images"]], ignore_index=True)
    if names.empty:
        raise ValueError("the image table is empty: no classes to fill model.classes with")
    by_label = names.drop_duplicates("label").set_index("label")["class_name"]
    n = int(by_label.index.max()) + 1
    missing = sorted(set(range(n)) - {int(v) for v in by_label.index})
    if missing:
        raise ValueError(
            f"labels {missing} have no image, so their class names are unknown; set model.classes "
            "to the class names in label order"
        )
    classes = [str(by_label[i]) for i in range(n)]
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"classes": classes})})


def initial_model(cfg: FinetuneConfig) -> nn.Module:
    """The model training starts from: built with ``train.seed``, weights from ``init_from``."""
    seed_everything(cfg.train.seed)
    model = family_of(cfg.model).build(cfg.model)
    if cfg.init_from:
        load_weights(model, cfg.init_from, cfg.model)
    return model


# --- the loop -------------------------------------------------------------------------------


def _evaluate(cfg: FinetuneConfig, model: nn.Module, loader: DataLoader, with_relevance: bool) -> dict:
    relevance = cfg.relevance if with_relevance else None
    result = family_of(cfg.model).evaluate(unwrap(model), loader, relevance=relevance)
    return {k: v for k, v in result.items() if k != "worst_group"}


def _print_progress(cfg: FinetuneConfig, record: dict[str, Any]) -> None:
    ev = record.get("eval", {})
    shown = [
        f"{k}={v:.4f}"
        for k, v in record["train"].items()
        if k in ("loss", "ce", "align", "cls", "contrastive", "kl", "pull", "push")
    ]
    shown += [f"{k}={ev[k]:.3f}" for k in ("acc", "wga", "align_mass_in") if k in ev]
    print(
        f"[finetune {cfg.run.name}] epoch {record['epoch'] + 1}/{cfg.train.epochs} " + " ".join(shown),
        flush=True,
    )


def run_loop(cfg: FinetuneConfig, tables: dict[str, Any], session: Any) -> dict[str, Any] | None:
    """Train ``cfg.train.epochs`` epochs (resuming from the session's latest checkpoint).

    Returns the summary on rank 0 (also written to ``<out>/finetune_summary.json``), else None.
    """
    if cfg.train.num_threads > 0:
        torch.set_num_threads(cfg.train.num_threads)
    cfg = with_classes(cfg, tables)  # recorded in every checkpoint's config.yaml
    model = initial_model(cfg)
    train_ds, eval_ds = datasets(cfg, tables, input_norm(model))
    spec = get_loss(cfg.loss.name)
    base = None  # the frozen initial model: the KL guard's base_logits, StarFT's teacher_* outputs
    if spec.uses_base_model(cfg.loss):
        base = initial_model(cfg).eval().requires_grad_(False)
    apply_trainable(model, cfg.train.params)  # before DDP: it must see which parameters train
    model = session.prepare_model(model)
    if base is not None:
        base.to(next(model.parameters()).device)
    batch = min(cfg.train.batch_size, len(train_ds))
    loader = session.prepare_loader(
        DataLoader(train_ds, batch_size=batch, shuffle=True, num_workers=cfg.data.loader_workers),
        cfg.train.seed,
    )
    eval_loader = DataLoader(eval_ds, batch_size=64, num_workers=cfg.data.loader_workers)
    optimizer = make_optimizer(model, cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train, len(loader))
    with session.latest_checkpoint() as directory:
        extra = restore_state(directory, cfg, model, optimizer, scheduler) if directory is not None else {}
    start = int(extra.get("epoch", -1)) + 1
    history: list[dict[str, Any]] = list(extra.get("history", []))
    starts = [*extra.get("start_epochs", []), start]
    rank0 = session.rank == 0
    tracker = Tracker.open(cfg, extra.get("mlflow_run_id")) if rank0 and cfg.run.track else None
    with_rel = bool(cfg.data.masks or cfg.data.spuriousworld)  # alignment needs masks
    if rank0 and start == 0:
        shutil.rmtree(Path(cfg.out) / SELECTED, ignore_errors=True)  # a stale choice of an earlier run
        history.append({"epoch": -1, "eval": _evaluate(cfg, model, eval_loader, with_rel)})
        if cfg.run.select != "last":  # the starting model is a candidate: CFT never returns worse
            _keep(cfg, model, history[-1])
        if tracker:
            tracker.log_epoch(history[-1], step=0)
    for epoch in range(start, cfg.train.epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        terms = train_one_epoch(
            model,
            loader,
            spec,
            cfg.loss,
            optimizer,
            scheduler,
            base_model=base,
            relevance=cfg.relevance,
            grad_clip=cfg.train.grad_clip,
            freeze_norm=cfg.train.freeze_norm,
            family=family_of(cfg.model).name,
            epoch=epoch,
            epochs=cfg.train.epochs,
        )
        terms = session.reduce(terms, next(model.parameters()).device)
        record: dict[str, Any] = {"epoch": epoch, "train": terms, "lr": scheduler.get_last_lr()[0]}
        last = epoch == cfg.train.epochs - 1
        if rank0 and ((epoch + 1) % cfg.run.eval_every == 0 or last):
            record["eval"] = _evaluate(cfg, model, eval_loader, with_rel)
            if _improves(cfg, record, history):
                _keep(cfg, model, record)
            record["kept"] = _kept(cfg, record)
        if rank0:
            _print_progress(cfg, record)
            history.append(record)
            if tracker:
                tracker.log_epoch(record, step=epoch + 1)
        extra = {
            "epoch": epoch,
            "history": history,
            "start_epochs": starts,
            "mlflow_run_id": tracker.run_id if tracker else None,
        }
        session.report(
            record,
            partial(write_state, cfg=cfg, model=model, optimizer=optimizer, scheduler=scheduler, extra=extra),
            epoch,
        )
    return _finish(cfg, model, eval_ds, history, starts, tracker) if rank0 else None


def _keep(cfg: FinetuneConfig, model: nn.Module, record: dict[str, Any]) -> None:
    """Save ``model`` as the ``run.select`` choice so far, with its epoch (-1: the starting
    model) and evaluation beside it."""
    extra = {"epoch": record["epoch"], "eval": record["eval"]}
    save_checkpoint(Path(cfg.out) / SELECTED, unwrap(model), cfg, extra=extra)


def _improves(cfg: FinetuneConfig, record: dict[str, Any], history: list[dict[str, Any]]) -> bool:
    """Whether ``record``'s evaluation beats the weights kept so far under ``run.select`` (the
    starting model first; their evaluation is stored beside them, so a resumed run compares against
    exactly those weights) by the margins ``run.min_gain`` / ``run.max_drop`` over the starting
    model (``history``'s epoch -1, restored with a resumed run). Only a strictly better score
    replaces them: ties keep the earlier."""
    if cfg.run.select == "last":
        return False
    kept = read_extra(Path(cfg.out) / SELECTED).get("eval")
    start = _start_eval(history)
    return improves(cfg.run.select, record["eval"], kept, start, cfg.run.min_gain, cfg.run.max_drop)


def _start_eval(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The starting model's evaluation (the epoch -1 record; None when it was not evaluated)."""
    return next((h["eval"] for h in history if h["epoch"] == -1 and "eval" in h), None)


def _kept(cfg: FinetuneConfig, record: dict[str, Any]) -> dict[str, Any]:
    """The evaluation of the weights this run keeps so far: under ``run.select`` best_* those in
    ``<out>/selected`` (the best epoch up to now), under ``last`` this epoch's. A sweep ranks and
    stops trials on it, so a trial stopped early is judged by the model it leaves behind."""
    if cfg.run.select == "last":
        return record["eval"]
    return read_extra(Path(cfg.out) / SELECTED).get("eval", record["eval"])


def _selected(cfg: FinetuneConfig, model: nn.Module, history: list[dict]) -> tuple[int, dict | None]:
    """Load the ``run.select`` choice into ``model`` (if any); return its epoch and evaluation."""
    chosen = Path(cfg.out) / SELECTED
    if cfg.run.select != "last" and chosen.is_dir():
        load_weights(model, chosen, cfg.model)
        extra = read_extra(chosen)
        return int(extra["epoch"]), extra["eval"]
    evals = [h for h in history if "eval" in h]
    return cfg.train.epochs - 1, evals[-1]["eval"] if evals else None


def _finish(
    cfg: FinetuneConfig,
    model: nn.Module,
    eval_ds: ImageMaskDataset,
    history: list[dict],
    starts: list[int],
    tracker: Tracker | None,
) -> dict[str, Any]:
    """Save the selected (by default the last) weights to ``<out>/model``, draw the before/after
    figure, log, summarise."""
    out = Path(cfg.out)
    epoch, final = _selected(cfg, unwrap(model), history)
    final_dir = save_checkpoint(
        out / "model", unwrap(model), cfg, extra={"epoch": epoch, "eval": final, "history": history}
    )
    figure_path = None
    if cfg.run.figure_images > 0 and "relevance" in family_of(cfg.model).outputs:  # not for clip
        figure = relevance_figure(
            initial_model(cfg), unwrap(model), eval_ds, cfg.run.figure_images, cfg.relevance
        )
        figure_path = out / "relevance_before_after.png"
        figure.savefig(figure_path, dpi=100)
        if tracker:
            tracker.log_figure(figure, "figures/relevance_before_after.png")
        import matplotlib.pyplot as plt

        plt.close(figure)
    initial = _start_eval(history)
    note = selection_note(
        cfg.run.select,
        epoch,
        cfg.train.epochs,
        final,
        initial,
        cfg.data.eval_split,
        cfg.run.min_gain,
        cfg.run.max_drop,
    )
    print(f"[finetune {cfg.run.name}] {note}", flush=True)
    summary = {
        "checkpoint": str(final_dir),
        "run_name": cfg.run.name,
        "start_epochs": starts,
        "epochs_trained_this_run": cfg.train.epochs - starts[-1],
        "initial": initial,
        "final": final,
        "epochs": cfg.train.epochs,
        "select": cfg.run.select,
        "selected_epoch": epoch,  # -1: no epoch beat the starting model, which is kept unchanged
        "kept_start": epoch < 0,
        "selection": note,
        "num_threads": torch.get_num_threads(),  # same config + same count -> same numbers (README)
        "history": history,
        "figure": str(figure_path) if figure_path else None,
        "mlflow_run_id": tracker.run_id if tracker else None,
    }
    (out / SUMMARY).write_text(json.dumps(summary, indent=2, default=str))
    if tracker:
        tracker.finish(final_dir, summary)
    return summary


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config`` holds the resolved FinetuneConfig (JSON) and the table paths."""
    if config.get("mlflow_tracking_uri"):
        os.environ["MLFLOW_TRACKING_URI"] = config["mlflow_tracking_uri"]
    cfg = FinetuneConfig.model_validate(config["cfg"])
    run_loop(cfg, config["tables"], RaySession())
