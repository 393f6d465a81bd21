"""Resumable training state beside a checkpoint: optimizer, scheduler and RNG in ``train_state.pt``.

A training checkpoint is a model checkpoint (``checkpoint.py``: weights + resolved config +
extra record) plus :data:`TRAIN_STATE`. :func:`check_resumable` refuses to resume a run whose
objective or data changed (``train.epochs`` may grow: that is how a finished run is extended).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from unspur.config import FinetuneConfig
from unspur.models.checkpoint import CheckpointError, load_weights, read_extra, save_checkpoint

__all__ = ["RESUME_KEYS", "TRAIN_STATE", "check_resumable", "restore_state", "write_state"]

TRAIN_STATE = "train_state.pt"


def write_state(
    directory: Path,
    cfg: FinetuneConfig,
    model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    extra: dict[str, Any],
) -> None:
    """A resumable checkpoint: the weights + resolved config + ``extra`` (:func:`save_checkpoint`)
    and the optimizer, scheduler and torch RNG state in ``train_state.pt``."""
    save_checkpoint(directory, model, cfg, extra=extra)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        directory / TRAIN_STATE,
    )


#: config sections a resumed run must share with the run that wrote the checkpoint
RESUME_KEYS = ("data", "model", "loss", "relevance", "train", "fewshot", "init_from")
_FREE = ("epochs", "num_threads")  # train keys a resumed run may change


def check_resumable(directory: Path, cfg: FinetuneConfig) -> None:
    """Refuse to resume a checkpoint written under another objective or data (``train.epochs``
    may grow: that is how a finished run is extended)."""
    saved_path = directory / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    now = cfg.model_dump(mode="json")
    for section in (saved, now):
        if isinstance(section.get("train"), dict):
            section["train"] = {k: v for k, v in section["train"].items() if k not in _FREE}
    differ = [k for k in RESUME_KEYS if k in saved and saved.get(k) != now.get(k)]
    if differ:
        raise CheckpointError(
            f"run {cfg.run.name!r} in {directory.parent} was checkpointed with a different {', '.join(differ)}; "
            "resuming would mix two runs. Use a new run.name (or out), or delete that folder to start over"
        )


def restore_state(
    directory: Path, cfg: FinetuneConfig, model: nn.Module, optimizer: Any, scheduler: Any
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`write_state` into model, optimizer, scheduler and the
    torch RNG (after :func:`check_resumable`); returns its extra record (epoch, history, ...)."""
    check_resumable(directory, cfg)
    load_weights(model, directory, cfg.model)
    state = torch.load(directory / TRAIN_STATE, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return read_extra(directory)
