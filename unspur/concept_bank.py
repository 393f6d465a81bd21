"""The concept bank: the file the concept stage writes and the mask stage / pipeline read.

Written format (JSON, ``format: unspur.concept_bank/1``)::

    {"format": ..., "classes": [names], "meta": {backend, model, prompt versions, ...},
     "concepts": {class: [{concept, kind, source, score}, ...]},          # kept
     "dropped":  {class: [{concept, kind, source, score, reason, detail}]},
     "spurious_templates": {kind: [{template, source, score}]},           # StarFT pools
     "spurious_dropped":   {kind: [{template, source, score, reason, detail}]},
     "unavailable": {kind: why}, "errors": [{class_name, kind, sample, status, error, raw}],
     "counts": {...}}

``kind`` is important | superclass | around; ``source`` is ``backend:model[:prompt version]``
(the prompt version for LLM backends); ``score`` in [0, 1] is the share of LLM samples that
proposed the concept, or the offline source's own score (WordNet: 1 / levels from the class).
A *user* bank (the ``bank`` proposer's input, YAML or JSON) may be that format, or the
short form::

    concepts:
      bird: {important: [beak, wing], superclass: [animal], around: [water]}
      tree: [trunk, crown]            # a plain list means important
    spurious_templates:
      background: ["a photo of a {class} in the snow."]
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "BANK_FORMAT",
    "ConceptBank",
    "load_bank",
    "read_bank_source",
    "bank_table_rows",
    "assemble_bank",
    "PLACEHOLDER",
    "spurious_captions",
]

BANK_FORMAT = "unspur.concept_bank/1"
KINDS = ("important", "superclass", "around")
#: the class-name placeholder of a spurious caption template
PLACEHOLDER = "{class}"


def spurious_captions(templates: Iterable[str], class_name: str) -> list[str]:
    """The spurious captions of ``class_name``: each template with its ``{class}`` filled in
    (``str.replace``, so other braces in a template are left alone); order kept."""
    captions = []
    for template in templates:
        if PLACEHOLDER not in template:
            raise ValueError(f"spurious template {template!r} has no {PLACEHOLDER} placeholder")
        captions.append(template.replace(PLACEHOLDER, class_name))
    return captions


@dataclass(frozen=True)
class ConceptBank:
    """A loaded concept bank. ``data`` is the JSON document (see the module docstring)."""

    data: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.data.get("classes") or self.data.get("concepts", {}))

    def concepts(self, class_name: str, kinds: Sequence[str] = ("important",)) -> list[str]:
        """Kept concepts of ``class_name`` whose kind is in ``kinds``, best score first."""
        if class_name not in self.data.get("concepts", {}):
            raise KeyError(f"class {class_name!r} is not in the concept bank; classes: {self.classes}")
        rows = [c for c in self.data["concepts"][class_name] if c["kind"] in kinds]
        return [c["concept"] for c in sorted(rows, key=lambda c: -float(c.get("score", 1.0)))]

    def by_kind(self, class_name: str) -> dict[str, list[str]]:
        """``{kind: [concept, ...]}`` of the kept concepts of ``class_name``."""
        return {kind: self.concepts(class_name, (kind,)) for kind in KINDS}

    def per_class(self, kinds: Sequence[str] = ("important",)) -> dict[str, list[str]]:
        """``{class: [concept, ...]}`` for every class (the mask stage's grounding prompts)."""
        return {name: self.concepts(name, kinds) for name in self.classes}

    def templates(self, kinds: Iterable[str] | None = None) -> list[str]:
        """Kept spurious caption templates (``{class}`` placeholder) of ``kinds`` (None = all)."""
        pools = self.data.get("spurious_templates", {})
        wanted = pools if kinds is None else [k for k in kinds if k in pools]
        return [t["template"] for k in wanted for t in pools[k]]

    def spurious_captions(self, class_name: str, kinds: Iterable[str] | None = None) -> list[str]:
        """The kept templates of ``kinds`` (None = all) with ``class_name`` filled in (StarFT's
        spurious captions of one class)."""
        return spurious_captions(self.templates(kinds), class_name)


def load_bank(path: str | Path) -> ConceptBank:
    """Read a bank written by ``unspur concepts`` (``concept_bank.json``, or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "concept_bank.json"
    if not path.is_file():
        raise FileNotFoundError(f"no concept bank at {path}; run `unspur concepts --out DIR` first")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != BANK_FORMAT:
        raise ValueError(f"{path} is not a concept bank of format {BANK_FORMAT} (got {data.get('format')!r})")
    return ConceptBank(data)


def _pairs(items: Any, where: str, key: str = "concept") -> list[tuple[str, float]]:
    if not isinstance(items, list):
        raise ValueError(f"{where} must be a list, got {type(items).__name__}")
    pairs = []
    for item in items:
        if isinstance(item, str):
            pairs.append((item, 1.0))
        elif isinstance(item, dict) and isinstance(item.get(key), str):
            pairs.append((item[key], float(item.get("score", 1.0))))
        else:
            raise ValueError(
                f"{where}: entry {item!r} is neither a string nor a {{{key}: ..., score: ...}} map"
            )
    return pairs


def _class_entry(name: str, entry: Any, where: str) -> dict[str, list[tuple[str, float]]]:
    if isinstance(entry, list) and all(isinstance(e, dict) and "kind" in e for e in entry):
        per_kind: dict[str, list[tuple[str, float]]] = {}
        for e in entry:  # the written format: [{concept, kind, score}]
            per_kind.setdefault(e["kind"], []).extend(_pairs([e], f"{where}.{name}"))
        return per_kind
    if isinstance(entry, list):
        return {"important": _pairs(entry, f"{where}.{name}")}
    if isinstance(entry, dict):
        unknown = sorted(set(entry) - set(KINDS))
        if unknown:
            raise ValueError(f"{where}.{name} has unknown kinds {unknown}; allowed: {list(KINDS)}")
        return {k: _pairs(v, f"{where}.{name}.{k}") for k, v in entry.items()}
    raise ValueError(f"{where}.{name} must be a list of concepts or a {{kind: [concepts]}} map")


def read_bank_source(path: str | Path) -> dict[str, Any]:
    """Read a user's bank (YAML/JSON, either form) into ``{"concepts": {class: {kind: [(text,
    score)]}}, "spurious_templates": {kind: [(text, score)]}}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"concept bank file {path} does not exist; set bank_path to a YAML/JSON bank")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"concept bank {path} is not valid {path.suffix or 'YAML'}: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("concepts"), dict):
        raise ValueError(f"concept bank {path} needs a top-level 'concepts' mapping of class -> concepts")
    concepts = {
        str(name): _class_entry(str(name), entry, f"{path}: concepts")
        for name, entry in data["concepts"].items()
    }
    pools = data.get("spurious_templates") or {}
    if not isinstance(pools, dict):
        raise ValueError(f"{path}: spurious_templates must map kind -> list of templates")
    templates = {
        str(k): _pairs(v, f"{path}: spurious_templates.{k}", key="template") for k, v in pools.items()
    }
    return {"concepts": concepts, "spurious_templates": templates}


def bank_table_rows(bank: dict[str, Any]) -> list[dict[str, Any]]:
    """Flat rows of a bank (kept and dropped, concepts and templates) for the Parquet copy.

    Columns: class_name ("" for templates), family (concept | spurious), kind, text, source,
    score, status (kept | dropped), reason, detail.
    """
    rows = []
    for status, section in (("kept", "concepts"), ("dropped", "dropped")):
        for name, items in bank.get(section, {}).items():
            rows += [
                dict(
                    class_name=name,
                    family="concept",
                    kind=c["kind"],
                    text=c["concept"],
                    source=c["source"],
                    score=float(c["score"]),
                    status=status,
                    reason=c.get("reason", ""),
                    detail=c.get("detail", ""),
                )
                for c in items
            ]
    for status, section in (("kept", "spurious_templates"), ("dropped", "spurious_dropped")):
        for kind, items in bank.get(section, {}).items():
            rows += [
                dict(
                    class_name="",
                    family="spurious",
                    kind=kind,
                    text=t["template"],
                    source=t["source"],
                    score=float(t["score"]),
                    status=status,
                    reason=t.get("reason", ""),
                    detail=t.get("detail", ""),
                )
                for t in items
            ]
    return rows


def _entry(c: dict[str, Any], key: str, dropped: bool) -> dict[str, Any]:
    entry = {key: c["text"], "kind": c["kind"], "source": c["source"], "score": c["score"]}
    if key == "template":
        entry.pop("kind")
    if dropped:
        entry.update(reason=c["reason"], detail=c["detail"])
    return entry


def assemble_bank(
    classes: Sequence[str],
    decisions: Sequence[dict[str, Any]],
    generations: Sequence[dict[str, Any]],
    unavailable: dict[str, str],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """Build the bank document from filter decisions and parsed generation rows.

    ``decisions``: candidates with family, class_name, kind, text, source, score, status,
    reason, detail. ``generations``: parsed rows (family, class_name, kind, sample, status,
    error, raw). Every class appears in ``concepts`` and ``dropped`` (possibly empty).
    """
    bank: dict[str, Any] = {
        "format": BANK_FORMAT,
        "classes": list(classes),
        "meta": dict(meta),
        "concepts": {c: [] for c in classes},
        "dropped": {c: [] for c in classes},
        "spurious_templates": {},
        "spurious_dropped": {},
        "unavailable": dict(unavailable),
    }
    for d in decisions:
        dropped = d["status"] != "kept"
        if d["family"] == "spurious":
            section = bank["spurious_dropped" if dropped else "spurious_templates"]
            section.setdefault(d["kind"], []).append(_entry(d, "template", dropped))
        else:
            bank["dropped" if dropped else "concepts"][d["class_name"]].append(_entry(d, "concept", dropped))
    for section in ("concepts", "dropped"):
        for items in bank[section].values():
            items.sort(
                key=lambda e: (KINDS.index(e["kind"]) if e["kind"] in KINDS else len(KINDS), -e["score"])
            )
    for section in ("spurious_templates", "spurious_dropped"):
        for items in bank[section].values():
            items.sort(key=lambda e: -e["score"])
    bank["errors"] = [
        {k: g[k] for k in ("class_name", "family", "kind", "sample", "status", "error")}
        | {"raw": g["raw"][:2000]}
        for g in generations
        if g["status"] != "ok"
    ]
    kept = [d for d in decisions if d["status"] == "kept"]
    bank["counts"] = {
        "generations": dict(Counter(g["status"] for g in generations)),
        "kept": dict(Counter(d["kind"] for d in kept if d["family"] == "concept")),
        "dropped": dict(
            Counter(d["reason"] for d in decisions if d["status"] != "kept" and d["family"] == "concept")
        ),
        "templates_kept": dict(Counter(d["kind"] for d in kept if d["family"] == "spurious")),
        "templates_dropped": dict(
            Counter(d["reason"] for d in decisions if d["status"] != "kept" and d["family"] == "spurious")
        ),
        "important_per_class": {
            c: sum(1 for e in bank["concepts"][c] if e["kind"] == "important") for c in classes
        },
    }
    return bank
