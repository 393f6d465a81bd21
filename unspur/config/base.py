"""Base of every unspur config: strict models, YAML load, dotted overrides, error messages.

Each workflow has one pydantic model; unknown keys are rejected, defaults live here and
nowhere else. Configs load from YAML (``yaml.safe_load``) and take dotted overrides from the
command line (``train.lr=1e-4``). A bad config raises :class:`ConfigError` naming the file,
the key and what is allowed, before any compute starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "ActorPoolConfig",
    "ActorResources",
    "ConfigError",
    "StrictModel",
    "apply_overrides",
    "dump_config",
    "flatten",
    "load_config",
    "parse_overrides",
    "validate_config",
]

M = TypeVar("M", bound="StrictModel")


class ConfigError(ValueError):
    """A configuration a user wrote is wrong; the message names the input and the fix."""


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ActorResources(StrictModel):
    """What each Ray actor of a stage holds: ``num_cpus`` / ``num_gpus`` (fractional allowed: keep
    num_cpus <= 0.5 on small CPU machines so Ray Data's reads are not starved); at least one > 0."""

    num_cpus: float = Field(0.5, ge=0)
    num_gpus: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _needs_a_resource(self) -> ActorResources:
        if self.num_cpus + self.num_gpus == 0:
            raise ValueError(f"an actor needs num_cpus or num_gpus > 0, got {self.num_cpus}, {self.num_gpus}")
        return self


class ActorPoolConfig(ActorResources):
    """A Ray Data actor pool: ``min_actors``..``max_actors`` actors, each holding ``num_gpus`` /
    ``num_cpus`` and taking ``batch_size`` rows per call."""

    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _pool(self) -> ActorPoolConfig:
        if self.max_actors < self.min_actors:
            raise ValueError(f"need 1 <= min_actors <= max_actors, got {self.min_actors}, {self.max_actors}")
        return self


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-4", "data.classes=[bird,tree]"]`` into a nested dict.

    Values are parsed as YAML scalars/flow collections, so numbers, booleans, lists work.
    """
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key part; write e.g. train.lr=1e-4")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from err
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = apply_overrides(merged[key], value)
        else:
            merged[key] = value
    return merged


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {loc}: unknown key (check the spelling; allowed keys are the model's fields)")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate_config(model: type[M], data: dict[str, Any], source: str = "<dict>") -> M:
    """Validate ``data`` against ``model``; raise :class:`ConfigError` listing every bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        _hint = _allowed_hint(model, err)
        raise ConfigError(_format_errors(err, source) + _hint) from None


def _allowed_hint(model: type[BaseModel], err: ValidationError) -> str:
    hints = []
    for e in err.errors():
        if e["type"] != "extra_forbidden":
            continue
        node: Any = model
        for part in e["loc"][:-1]:
            field = getattr(node, "model_fields", {}).get(part)
            ann = getattr(field, "annotation", None)
            node = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if node is None:
                break
        keys = (
            (node.allowed_keys() if hasattr(node, "allowed_keys") else list(node.model_fields))
            if node
            else []
        )
        if keys:
            hints.append(f"  allowed at {'.'.join(map(str, e['loc'][:-1])) or '<root>'}: " + ", ".join(keys))
    return ("\n" + "\n".join(dict.fromkeys(hints))) if hints else ""


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None) -> M:
    """Load ``path`` (YAML) into ``model``, applying dotted ``overrides``; None means defaults."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping at top level, got {type(loaded).__name__}"
            )
        data = loaded
    if overrides:
        data = apply_overrides(data, parse_overrides(overrides))
        source += " + overrides " + " ".join(overrides)
    return validate_config(model, data, source)


def dump_config(cfg: BaseModel, path: str | Path) -> Path:
    """Write the resolved config as YAML that :func:`load_config` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def flatten(data: dict[str, Any] | BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten nested config values to ``{"train.lr": 1e-4, ...}`` (for MLflow params)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
