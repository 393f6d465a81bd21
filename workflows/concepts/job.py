"""``unspur concepts``: class names -> prompt rows -> proposer -> parse -> filter -> concept bank.

Stages (METHODS.md 1.1; ARCHITECTURE.md concept bank contract):

1. plan (driver): resolve the class list, make one request row per (class, kind, sample) and
   per spurious-template kind, look each up in the generation cache (keyed by class, kind,
   sample, prompt version, backend, model / source options and sampling).
2. propose (Ray Data, cache misses only): the backend's actor pool (wordnet, bank,
   transformers) or the ``ray.data.llm`` vLLM processor. Answers are written to the cache.
3. parse (driver, pure): every generation row becomes ok / empty / error; nothing is dropped.
4. filter (Ray Data actor with the text encoder): one group per class (and per template kind);
   decisions are cached too, so an unchanged rerun does no Ray work at all.
5. write ``concept_bank.json`` + ``concept_bank.parquet`` under ``out`` and log to MLflow.

The number of generation calls (requests sent to the proposer) is printed and returned; a
rerun with the same settings makes zero.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from unspur.actors.concepts import (
    ConceptFilter,
    collect_candidates,
    normalize_class_name,
    parse_answer,
    prompt_version,
)
from unspur.actors.proposers import PROPOSERS, REQUEST_COLUMNS, ProposerSpec, VLLMRowFunctions
from unspur.concept_bank import assemble_bank, bank_table_rows
from unspur.config import ConceptsConfig, SpuriousWorldConfig
from unspur.io import write_json_atomic
from unspur.workflows.job import main_for

__all__ = ["outputs", "CONFIG", "Plan", "JsonCache", "resolve_classes", "prepare", "build", "run", "main"]

CONFIG = ConceptsConfig


# --- classes -------------------------------------------------------------------------------


def _read_class_file(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(
            f"class file {path} does not exist; set classes.path to a .txt/.json/.yaml file"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".json", ".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
        data = data.get("classes") if isinstance(data, dict) else data
        if not isinstance(data, list):
            raise ValueError(f"class file {path} must hold a list of names (or a 'classes' list)")
        return [str(x) for x in data]
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _read_class_table(path: str) -> list[str]:
    import pyarrow.dataset as pads

    table = pads.dataset(path, format="parquet")
    if "class_name" not in table.schema.names:
        raise ValueError(f"image table {path} has no class_name column (columns: {table.schema.names})")
    if "label" not in table.schema.names:
        return sorted(set(table.to_table(columns=["class_name"]).column("class_name").to_pylist()))
    data = table.to_table(columns=["label", "class_name"])
    pairs = sorted(
        set(zip(data.column("label").to_pylist(), data.column("class_name").to_pylist(), strict=True))
    )
    return list(dict.fromkeys(name for _, name in pairs))


def resolve_classes(cfg: ConceptsConfig) -> list[str]:
    """The class names (normalised: NFC, single spaces); errors for empty lists and duplicates."""
    src = cfg.classes
    if src.source == "names":
        names = list(src.names)
    elif src.source == "file":
        names = _read_class_file(Path(src.path))
    elif src.source == "table":
        names = _read_class_table(src.path)
    else:
        names = list(SpuriousWorldConfig().classes)
    names = [normalize_class_name(n) for n in names]
    if not names or not all(names):
        raise ValueError(
            f"the class list from classes.source={src.source} is empty or has blank names: {names}"
        )
    folded = Counter(n.casefold() for n in names)
    dupes = [n for n in names if folded[n.casefold()] > 1]
    if dupes:
        raise ValueError(
            f"duplicate class names (compared case-insensitively): {sorted(set(dupes))}; "
            "each class must appear once"
        )
    return names


# --- plan and cache -------------------------------------------------------------------------


def _source_id(cfg: ConceptsConfig) -> tuple[str, dict[str, Any]]:
    """(model name shown in provenance, options that change answers and so key the cache)."""
    if cfg.backend == "wordnet":
        return "wordnet-3.0", cfg.wordnet.model_dump()
    if cfg.backend == "bank":
        path = Path(cfg.bank_path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        return path.name, {"sha256": digest}
    return cfg.model, cfg.sampling.model_dump()


def _request(
    cfg: ConceptsConfig, spec: ProposerSpec, family: str, class_name: str, kind: str, sample: int
) -> dict[str, Any]:
    model, options = _source_id(cfg)
    version = prompt_version(family)
    seed = cfg.sampling.seed + sample if spec.llm else 0
    key = dict(
        family=family,
        class_name=class_name,
        kind=kind,
        sample=sample,
        prompt_version=version,
        backend=cfg.backend,
        model=model,
        options=options,
        seed=seed,
    )
    rid = hashlib.sha256(json.dumps(key, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:32]
    source = f"{cfg.backend}:{model}:{version}" if spec.llm else f"{cfg.backend}:{model}"
    return dict(
        request_id=rid,
        family=family,
        class_name=class_name,
        kind=kind,
        sample=sample,
        seed=seed,
        source=source,
    )


class JsonCache:
    """One JSON file per key under ``root`` (``<request_id>.json``): generations, filter decisions.

    Rows with ``failed`` set (an exception in the proposer) are not stored, so they are retried.
    """

    def __init__(self, root: Path, enabled: bool = True) -> None:
        self.root, self.enabled = root, enabled

    def get(self, request_id: str) -> dict[str, Any] | None:
        path = self.root / f"{request_id}.json"
        if not self.enabled or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return None  # a torn write: generate again

    def put(self, row: dict[str, Any]) -> None:
        if not self.enabled or row["failed"]:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(row, self.root / f"{row['request_id']}.json", ensure_ascii=False)


@dataclass
class Plan:
    """The requests of one run, split into cache hits (answered) and misses (to generate)."""

    classes: list[str]
    spec: ProposerSpec
    requests: list[dict[str, Any]]
    hits: list[dict[str, Any]] = field(default_factory=list)
    misses: list[dict[str, Any]] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)


def cache_for(cfg: ConceptsConfig) -> JsonCache:
    root = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.out) / "cache"
    return JsonCache(root / cfg.backend, enabled=cfg.use_cache)


def prepare(cfg: ConceptsConfig) -> Plan:
    """Resolve classes, build the request rows, split them by the cache."""
    spec = PROPOSERS[cfg.backend]
    plan = Plan(resolve_classes(cfg), spec, [])
    samples = range(cfg.sampling.n_samples if spec.llm else 1)
    for kind in cfg.kinds:
        if kind not in spec.kinds:
            plan.unavailable[kind] = spec.unavailable.get(kind, f"backend {spec.name} cannot propose {kind}")
            continue
        plan.requests += [_request(cfg, spec, "concept", c, kind, s) for c in plan.classes for s in samples]
    for kind in cfg.spurious_kinds:
        if not spec.spurious:
            plan.unavailable[f"spurious/{kind}"] = spec.unavailable.get("spurious", "not available")
            continue
        plan.requests += [_request(cfg, spec, "spurious", "", kind, s) for s in samples]
    cache = cache_for(cfg)
    for req in plan.requests:
        hit = cache.get(req["request_id"])
        if hit is None:
            plan.misses.append(req)
        else:
            plan.hits.append({**req, "raw": hit["raw"], "error": hit["error"], "failed": False})
    return plan


# --- Ray Data stages --------------------------------------------------------------------------


def _propose(ds: ray.data.Dataset, cfg: ConceptsConfig, spec: ProposerSpec) -> ray.data.Dataset:
    if spec.name == "vllm":
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig

        v, s = cfg.vllm, cfg.sampling
        config = vLLMEngineProcessorConfig(
            model_source=cfg.model,
            engine_kwargs={**v.engine_kwargs, "tensor_parallel_size": v.tensor_parallel_size},
            concurrency=v.concurrency,
            batch_size=v.batch_size,
            accelerator_type=v.accelerator_type,
            should_continue_on_error=True,
        )
        fns = VLLMRowFunctions(s.temperature, s.top_p, s.max_tokens, v.structured_outputs)
        return build_processor(config, preprocess=fns.preprocess, postprocess=fns.postprocess)(ds)
    llm = spec.name == "transformers"
    t = cfg.transformers
    return ds.map_batches(
        spec.actor,
        fn_constructor_kwargs=spec.kwargs(cfg),
        batch_format="numpy",
        batch_size=t.batch_size if llm else 64,
        compute=ray.data.ActorPoolStrategy(size=t.pool_size if llm else 1),
        num_cpus=t.num_cpus if llm else cfg.num_cpus,
        num_gpus=t.num_gpus if llm else 0,
    )


def build(cfg: ConceptsConfig, plan: Plan | None = None) -> ray.data.Dataset | None:
    """The unexecuted proposer Dataset over the plan's cache misses (None when all are cached)."""
    plan = plan or prepare(cfg)
    if not plan.misses:
        return None
    ds = ray.data.from_items(plan.misses, override_num_blocks=min(len(plan.misses), 8))
    return _propose(ds, cfg, plan.spec)


def _normalize(row: dict[str, Any]) -> dict[str, Any]:
    """A proposer output row -> request columns + raw / error / failed (vLLM error rows too)."""
    out = {k: row[k] for k in REQUEST_COLUMNS}
    inference_error = str(row.get("__inference_error__") or "")
    raw = row.get("raw") if "raw" in row else row.get("generated_text")
    out["raw"] = "" if raw is None or inference_error else str(raw)
    out["error"] = inference_error or str(row.get("error") or "")
    out["failed"] = bool(inference_error) or bool(row.get("failed", False))
    out["sample"], out["seed"] = int(out["sample"]), int(out["seed"])
    return out


def _generate(cfg: ConceptsConfig, plan: Plan) -> list[dict[str, Any]]:
    """Run the proposer over the misses; every miss comes back (lost rows become error rows)."""
    ds = build(cfg, plan)
    if ds is None:
        return []
    cache = cache_for(cfg)
    got: dict[str, dict[str, Any]] = {}
    for row in ds.iter_rows():
        out = _normalize(row)
        got[out["request_id"]] = out
        cache.put(out)
    lost = {"raw": "", "error": "the proposer returned no row for this request", "failed": True}
    return [got.get(r["request_id"], {**r, **lost}) for r in plan.misses]


def parse_generation(row: dict[str, Any]) -> dict[str, Any]:
    """Parse one generation row: status ok | empty | error, items, error (the proposer's reason kept)."""
    if row["failed"]:
        return {**row, "status": "error", "items": [], "format": ""}
    parsed = parse_answer(row["raw"])
    error = parsed.error
    if parsed.status != "ok" and row["error"]:
        error = f"{row['error']}" + (f" ({parsed.error})" if parsed.error else "")
    return {**row, "status": parsed.status, "items": parsed.items, "format": parsed.fmt, "error": error}


def _filter(
    cfg: ConceptsConfig, classes: list[str], candidates: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Filter decisions for ``candidates``, cached like generations (same inputs -> no Ray work)."""
    key = json.dumps(
        [classes, candidates, cfg.filters.model_dump(), cfg.similarity.model_dump()],
        sort_keys=True,
        ensure_ascii=False,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    cache = JsonCache(cache_for(cfg).root.parent / "filter", enabled=cfg.use_cache)
    hit = cache.get(digest)
    if hit is not None:
        return hit["decisions"]
    decisions = _run_filter(cfg, classes, candidates)
    cache.put({"request_id": digest, "decisions": decisions, "failed": False})
    return decisions


def _run_filter(
    cfg: ConceptsConfig, classes: list[str], candidates: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in candidates:
        key = (c["family"], c["class_name"] if c["family"] == "concept" else c["kind"])
        groups.setdefault(key, []).append(c)
    if not groups:
        return []
    items = [
        {"family": f, "group": g, "candidates": json.dumps(cs, ensure_ascii=False)}
        for (f, g), cs in groups.items()
    ]
    s = cfg.similarity
    encoder = dict(
        name=s.encoder,
        device=s.device,
        batch_size=s.batch_size,
        clip_model=s.clip_model,
        clip_pretrained=s.clip_pretrained,
    )
    ds = ray.data.from_items(items, override_num_blocks=1).map_batches(
        ConceptFilter,
        batch_format="numpy",
        batch_size=64,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=cfg.num_cpus,
        fn_constructor_kwargs=dict(class_names=classes, encoder=encoder, filters=cfg.filters.model_dump()),
    )
    decisions = [d for row in ds.iter_rows() for d in json.loads(row["decisions"])]
    if len(decisions) != len(candidates):
        raise RuntimeError(f"the filter returned {len(decisions)} decisions for {len(candidates)} candidates")
    return decisions


# --- outputs -------------------------------------------------------------------------------------


def _write(cfg: ConceptsConfig, bank: dict[str, Any]) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, parquet_path = out / "concept_bank.json", out / "concept_bank.parquet"
    json_path.write_text(json.dumps(bank, indent=1, ensure_ascii=False), encoding="utf-8")
    schema = pa.schema(
        [
            ("class_name", pa.string()),
            ("family", pa.string()),
            ("kind", pa.string()),
            ("text", pa.string()),
            ("source", pa.string()),
            ("score", pa.float64()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("detail", pa.string()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(bank_table_rows(bank), schema=schema), parquet_path)
    return json_path, parquet_path


def _track(cfg: ConceptsConfig, bank: dict[str, Any], summary: dict[str, Any]) -> None:
    from unspur import tracking

    with tracking.start_run(cfg.out, cfg.experiment, run_name=f"concepts-{cfg.backend}"):
        tracking.log_config(cfg)
        tracking.log_metrics(
            {
                "generation_calls": summary["generation_calls"],
                "cache_hits": summary["cache_hits"],
                **bank["counts"],
            }
        )
        tracking.log_dict(bank, "concept_bank.json")


def run(cfg: ConceptsConfig) -> dict[str, Any]:
    """Execute the stage; returns a summary (paths, counts, generation calls, cache hits)."""
    plan = prepare(cfg)
    generated = _generate(cfg, plan)
    print(
        f"[concepts] backend={cfg.backend} requests={len(plan.requests)} "
        f"generation calls={len(plan.misses)} cache hits={len(plan.hits)}",
        flush=True,
    )
    rows = [parse_generation(r) for r in plan.hits + generated]
    if len(rows) != len(plan.requests):
        raise RuntimeError(f"{len(plan.requests)} requests but {len(rows)} generation rows")
    decisions = _filter(cfg, plan.classes, collect_candidates(rows))
    model, _ = _source_id(cfg)
    meta = dict(
        backend=cfg.backend,
        model=model,
        prompt_version=prompt_version("concept"),
        spurious_prompt_version=prompt_version("spurious"),
        sampling=cfg.sampling.model_dump(),
        similarity=cfg.similarity.model_dump(),
        filters=cfg.filters.model_dump(),
    )
    bank = assemble_bank(plan.classes, decisions, rows, plan.unavailable, meta)
    json_path, parquet_path = _write(cfg, bank)
    summary = dict(
        bank=str(json_path),
        parquet=str(parquet_path),
        classes=plan.classes,
        requests=len(plan.requests),
        generation_calls=len(plan.misses),
        cache_hits=len(plan.hits),
        counts=bank["counts"],
        unavailable=plan.unavailable,
    )
    if cfg.track:
        _track(cfg, bank, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    return main_for("concepts", ConceptsConfig, run, argv)


def outputs(cfg: ConceptsConfig) -> dict[str, Any]:
    """What a pipeline stage of this job offers later stages: ``bank`` (the concept bank JSON)."""
    return {"bank": str(Path(cfg.out).resolve() / "concept_bank.json")}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
