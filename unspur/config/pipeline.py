"""Config of ``unspur run`` / ``unspur demo``: a pipeline is a YAML list of named stages.

Each stage names its job (``synth``, ``concepts``, ``masks``, ``finetune``, ``sweep``,
``evaluate``...), holds keys of that job's own config, and refers to earlier stages' outputs as
``${stage.output}`` (``${data.images}``, ``${masks.masks}``, ``${base.model}``; every stage also has
``${stage.config}``, its validated config). A mapping with the key ``extends: ${stage.config}``
starts from that config and overrides what it lists (``replace: [loss]`` swaps a whole section
instead of merging into it). A new method's pipeline is a new YAML file.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, model_validator

from unspur.config.base import ActorResources, StrictModel, apply_overrides

__all__ = [
    "PipelineConfig",
    "PipelineEvaluateConfig",
    "ReportConfig",
    "StageSpec",
    "STAGE_NAME",
    "references",
    "resolve",
]

#: a stage name: a lowercase identifier (it names a folder and a reference prefix).
STAGE_NAME = r"^[a-z][a-z0-9_]*$"
#: keys of a stage itself; every other key in a ``<stage>:`` section goes to its job config.
_STAGE_KEYS = ("job", "enabled")


class StageSpec(StrictModel):
    """One stage: ``name`` (its folder ``<out>/<name>`` and reference prefix), ``job`` (a key of
    the pipeline's job table), ``config`` (keys of that job's config, ``${...}`` references
    allowed) and ``enabled`` (a disabled stage is planned for validation but not run)."""

    name: str = Field(pattern=STAGE_NAME)
    job: str
    config: dict[str, Any] = {}
    enabled: bool = True


class PipelineEvaluateConfig(ActorResources):
    """Evaluation of every trained model on ``split`` (never the split used for choices).

    ``models`` maps a stage whose job trains a model (its ``${stage.model}`` output) to its label in
    the report, in table order; disabled stages are left out. ``images`` / ``masks``: the image
    table and the optional masks / parts table for relevance alignment (``${...}`` allowed). The
    other keys are the evaluate job's.
    """

    models: dict[str, str] = {}
    images: str | None = None
    masks: str | None = None
    split: str = "test"
    batch_size: int = Field(64, ge=1)
    relevance: str | None = "rollout"
    num_actors: int = Field(1, ge=1)


class RegimeConfig(StrictModel):
    """One band of the method's measured curve: a baseline whose worst-group accuracy is at most
    ``max_base_wga`` falls here, and ``note`` says what the method did to such baselines when it
    was measured (e.g. benchmarks/README.md's CFT curve)."""

    max_base_wga: float = Field(ge=0, le=1)
    note: str = Field(min_length=1)


class GainConfig(StrictModel):
    """The report's headline: ``label``'s worst-group gain of ``method`` over ``baseline`` (model
    names of ``evaluate.models``). ``regimes``: bands of the baseline's wga in increasing order
    (the first band the baseline falls in is stated as where this run sits; the last should reach
    1.0)."""

    method: str
    baseline: str
    label: str = ""
    regimes: list[RegimeConfig] = []

    @model_validator(mode="after")
    def _check_regimes(self) -> GainConfig:
        bounds = [r.max_base_wga for r in self.regimes]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ValueError(f"report.gain.regimes: max_base_wga must increase band by band, got {bounds}")
        return self


class ReportConfig(StrictModel):
    """``report.md`` and the terminal table: ``title``, the optional headline ``gain``, and what a
    group of the data is (``groups``: ``class/background`` for SpuriousWorld, ``class/marker`` for
    digits-grid), as the headings name it."""

    title: str = "unspur report"
    gain: GainConfig | None = None
    groups: str = "class/background"


class PipelineConfig(StrictModel):
    """``unspur run`` / ``unspur demo``: the stages in order, each in ``<out>/<name>`` and reused
    when its output exists with the same config (and the same stages before it).

    A top-level key that names a stage overrides it: ``cft: {train: {lr: 1e-4}}`` in YAML, or
    ``cft.train.lr=1e-4`` / ``sweep.enabled=true`` on the command line (``job`` and ``enabled`` are
    the stage's own keys; every other key goes to its job config).
    """

    out: str = "runs/pipeline"
    stages: list[StageSpec] = Field(min_length=1)
    evaluate: PipelineEvaluateConfig = Field(default_factory=PipelineEvaluateConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    experiment: str = "pipeline"
    reuse: bool = True

    @model_validator(mode="before")
    @classmethod
    def _stage_sections(cls, data: Any) -> Any:
        """Fold ``<stage>: {...}`` sections (YAML or dotted overrides) into that stage."""
        if not isinstance(data, dict) or not isinstance(data.get("stages"), list):
            return data
        stages = [dict(s) if isinstance(s, dict) else s for s in data["stages"]]
        by_name = {s.get("name"): s for s in stages if isinstance(s, dict)}
        rest: dict[str, Any] = {}
        for key, value in data.items():
            stage = by_name.get(key) if key not in cls.model_fields else None
            if stage is None:
                rest[key] = value
                continue
            if not isinstance(value, dict):
                raise ValueError(
                    f"section {key!r} overrides stage {key!r}: give a mapping of its config keys"
                )
            for sub, item in value.items():
                if sub in _STAGE_KEYS:
                    stage[sub] = item
                else:
                    stage["config"] = apply_overrides(stage.get("config") or {}, {sub: item})
        rest["stages"] = stages
        return rest

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        names = [s.name for s in self.stages]
        repeats = sorted({n for n in names if names.count(n) > 1})
        if repeats:
            raise ValueError(f"stage names must be unique; repeated: {repeats}")
        reserved = [n for n in names if n in type(self).model_fields]
        if reserved:
            raise ValueError(f"stage names {reserved} are pipeline keys; rename those stages")
        unknown = [m for m in self.evaluate.models if m not in names]
        if unknown:
            raise ValueError(f"evaluate.models names {unknown}, which are not stages; stages are {names}")
        gain = self.report.gain
        if gain is not None:
            missing = [m for m in (gain.method, gain.baseline) if m not in self.evaluate.models]
            if missing:
                raise ValueError(f"report.gain names {missing}, which are not in evaluate.models")
        return self


def references(value: Any) -> list[str]:
    """Every ``stage.output`` that ``value`` (any nesting of dicts, lists and strings) refers to."""
    if isinstance(value, str):
        return [m.group(1) for m in _REF.finditer(value)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


_EXTEND_KEYS = ("extends", "replace")
_REF = re.compile(r"\$\{([a-z][a-z0-9_]*(?:\.[A-Za-z0-9_]+)+)\}")


def resolve(value: Any, outputs: dict[str, dict[str, Any]], where: str) -> Any:
    """Replace every ``${stage.key}`` in ``value`` with ``outputs[stage][key]``.

    A string that is one reference becomes the referred value itself (a path, a list, a number, a
    mapping); a reference inside a longer string is formatted into it. A mapping with the key
    ``extends`` starts from the mapping it refers to, its other keys merged on top (deeply), except
    the keys listed in ``replace``, which replace the inherited value whole.
    Raises ``ValueError`` naming ``where``, the reference and what is available.
    """
    if isinstance(value, dict):
        rest = {k: resolve(v, outputs, where) for k, v in value.items() if k not in _EXTEND_KEYS}
        if "extends" not in value:
            if "replace" in value:
                raise ValueError(
                    f"{where}: replace lists keys of an extended config; add extends: ${{stage.config}}"
                )
            return rest
        replace = value.get("replace", [])
        if not isinstance(replace, list) or not all(isinstance(k, str) for k in replace):
            raise ValueError(f"{where}: replace must be a list of keys, got {replace!r}")
        base = resolve(value["extends"], outputs, where)
        if not isinstance(base, dict):
            raise ValueError(
                f"{where}: extends must refer to a mapping such as ${{cft.config}}, got {value['extends']!r}"
            )
        return _extend(base, rest, replace)
    if isinstance(value, list):
        return [resolve(v, outputs, where) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _REF.fullmatch(value)
    if whole:
        return _lookup(whole.group(1), outputs, where)
    return _REF.sub(lambda m: str(_lookup(m.group(1), outputs, where)), value)


def _extend(base: dict[str, Any], over: dict[str, Any], replace: list[str]) -> dict[str, Any]:
    """``over`` merged deeply into ``base``, except the keys in ``replace``, whose mapping replaces
    the inherited one (another loss, segmenter or model family than the extended config's)."""
    merged = dict(base)
    for key, value in over.items():
        old = merged.get(key)
        merged[key] = (
            apply_overrides(old, value)
            if isinstance(value, dict) and isinstance(old, dict) and key not in replace
            else value
        )
    return merged


def _lookup(ref: str, outputs: dict[str, dict[str, Any]], where: str) -> Any:
    stage, *path = ref.split(".")
    if stage not in outputs:
        raise ValueError(
            f"{where}: ${{{ref}}} refers to stage {stage!r}, which is not an earlier stage; "
            f"earlier stages: {list(outputs) or 'none'}"
        )
    node: Any = outputs[stage]
    for depth, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            known = sorted(node) if isinstance(node, dict) else []
            at = ".".join([stage, *path[:depth]])
            raise ValueError(f"{where}: ${{{ref}}}: {at!r} has no key {key!r}; it has {known}")
        node = node[key]
    return node
