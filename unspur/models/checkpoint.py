"""Model checkpoints: ``model.safetensors`` + the resolved ``config.yaml`` (+ ``extra.json``).

The config written is the whole job config (e.g. a FinetuneConfig) or a bare ModelConfig; the
model section is found either way, so a checkpoint rebuilds its own architecture. Loading
weights into a model of another architecture raises :class:`CheckpointError` naming both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel
from safetensors.torch import load_file, save_file
from torch import nn

from unspur.config.model import model_config_class, validate_model_config
from unspur.models.attention import unwrap

__all__ = [
    "CheckpointError",
    "checkpoint_model_config",
    "load_weights",
    "read_config",
    "read_extra",
    "save_checkpoint",
]

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
EXTRA = "extra.json"


class CheckpointError(ValueError):
    """A checkpoint folder is missing, unreadable, or holds another architecture."""


def _model_section(config: dict[str, Any]) -> dict[str, Any]:
    section = config.get("model") if isinstance(config.get("model"), dict) else config
    if "name" not in section:
        raise CheckpointError("checkpoint config has neither a 'model' section nor a model 'name'")
    return section


def save_checkpoint(
    directory: str | Path, model: nn.Module, config: BaseModel, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model``'s weights (unwrapped from DDP) and ``config`` (resolved) to ``directory``.

    ``extra`` (JSON-serialisable, e.g. epoch and metrics) goes to ``extra.json``. Returns the folder.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = config.model_dump(mode="json")
    section = _model_section(data)
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    meta = {"unspur_model": str(section["name"]), "num_classes": str(section.get("num_classes"))}
    save_file(state, str(directory / WEIGHTS), metadata=meta)
    (directory / CONFIG).write_text(yaml.safe_dump(data, sort_keys=False))
    if extra is not None:
        (directory / EXTRA).write_text(json.dumps(extra, indent=2, default=str))
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    """The resolved config a checkpoint was saved with; CheckpointError if it is not a checkpoint."""
    if not (directory / WEIGHTS).is_file() or not (directory / CONFIG).is_file():
        raise CheckpointError(
            f"{directory} is not an unspur checkpoint: it needs {WEIGHTS} and {CONFIG} "
            "(written by unspur.models.save_checkpoint / unspur finetune)"
        )
    return yaml.safe_load((directory / CONFIG).read_text()) or {}


def checkpoint_model_config(directory: str | Path) -> Any:
    """The model config a checkpoint was saved with (its family's class, e.g. ModelConfig or
    ClipModelConfig), ``checkpoint`` and ``pretrained`` cleared: the weights are the checkpoint's."""
    directory = Path(directory)
    section = dict(_model_section(read_config(directory)))
    section["checkpoint"] = None
    section["pretrained"] = model_config_class(section).model_fields["pretrained"].default
    return validate_model_config(section, source=str(directory / CONFIG))


def read_extra(directory: str | Path) -> dict[str, Any]:
    """The ``extra.json`` of a checkpoint ({} if none)."""
    path = Path(directory) / EXTRA
    return json.loads(path.read_text()) if path.is_file() else {}


def _describe(cfg: Any) -> str:
    return (
        f"{cfg.name} (family={cfg.family}, num_classes={cfg.num_classes}, img_size={cfg.img_size}, "
        f"kwargs={cfg.kwargs})"
    )


def load_weights(model: nn.Module, directory: str | Path, expected: Any = None) -> nn.Module:
    """Load a checkpoint's weights into ``model`` (in place); returns ``model``.

    If ``expected`` (the config ``model`` was built from) names another architecture than the
    checkpoint's, or the tensors do not match, raises CheckpointError naming both.
    """
    directory = Path(directory)
    saved = checkpoint_model_config(directory)
    if expected is not None:
        same = (saved.family, saved.name, saved.num_classes, saved.img_size) == (
            expected.family,
            expected.name,
            expected.num_classes,
            expected.img_size,
        )
        if not same:
            raise CheckpointError(
                f"checkpoint {directory} holds {_describe(saved)}, but the config asks for "
                f"{_describe(expected)}; set model.name/num_classes/img_size to the checkpoint's "
                "or pick a checkpoint of this architecture"
            )
    state = load_file(str(directory / WEIGHTS))
    target = unwrap(model)
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        got = _describe(expected) if expected is not None else type(target).__name__
        raise CheckpointError(
            f"checkpoint {directory} holds {_describe(saved)}, which does not fit the model "
            f"{got}: missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatch {wrong[:3]}"
        )
    with torch.no_grad():
        target.load_state_dict(state, strict=True)
    return model
