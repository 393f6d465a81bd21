"""``unspur concepts`` end to end on a local Ray: wordnet config, cache, transformers, vllm build."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from unspur.concept_bank import load_bank
from unspur.config import ConceptsConfig, ConfigError, load_config
from unspur.workflows.concepts import job

REPO = Path(__file__).resolve().parents[2]
WORDNET_YAML = REPO / "workflows" / "configs" / "concepts_wordnet.yaml"


def test_wordnet_config_grounds_spuriousworld_parts_and_rerun_is_cached(ray_local, tmp_path, capsys):
    from unspur.data.spuriousworld import CLASS_PARTS

    assert job.main(["--config", str(WORDNET_YAML), "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    # 4 classes x (important, superclass) + 3 spurious kinds from the built-in template bank
    assert "generation calls=11 cache hits=0" in printed
    bank = load_bank(tmp_path)
    for cls, parts in CLASS_PARTS.items():
        grounded = [c for c in bank.concepts(cls) if c.split()[-1] in parts]
        assert len(grounded) >= 3, f"{cls}: only {grounded} of {bank.concepts(cls)} name a part {parts}"
    data = bank.data
    assert set(data["unavailable"]) == {"around"}
    for kind in ("background", "texture", "resolution"):
        assert len(bank.templates([kind])) >= 15 and all("{class}" in t for t in bank.templates([kind]))
    assert bank.spurious_captions("bird", ["background"])[0].count("bird") == 1
    assert sum(data["counts"]["generations"].values()) == 11
    dropped = {(d["concept"], d["reason"]) for d in data["dropped"]["bird"]}
    assert ("bird", "class_name") in dropped  # WordNet lists bird.n.02 (the meat) as a part of a bird
    table = pq.read_table(tmp_path / "concept_bank.parquet").to_pylist()
    n_kept = sum(len(v) for v in data["concepts"].values())
    n_dropped = sum(len(v) for v in data["dropped"].values())
    n_templates = sum(len(v) for k in ("spurious_templates", "spurious_dropped") for v in data[k].values())
    assert len(table) == n_kept + n_dropped + n_templates and {r["status"] for r in table} == {
        "kept",
        "dropped",
    }
    import mlflow

    from unspur.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri(tmp_path))
    runs = mlflow.search_runs(experiment_names=["concepts"])
    assert len(runs) == 1 and runs["metrics.generation_calls"][0] == 11
    assert runs["metrics.kept.important"][0] == data["counts"]["kept"]["important"]

    cfg = load_config(ConceptsConfig, WORDNET_YAML, [f"out={tmp_path}", "track=false"])
    summary = job.run(cfg)
    assert summary["generation_calls"] == 0 and summary["cache_hits"] == 11
    assert load_bank(tmp_path).data["concepts"] == data["concepts"]


def test_transformers_noise_becomes_error_rows_and_is_cached(ray_local, tmp_path, tiny_causal_lm):
    model = tiny_causal_lm()
    overrides = [
        f"out={tmp_path}",
        "backend=transformers",
        f"model={model}",
        "classes.source=names",
        "classes.names=[bird, 'Caf\u00e9 cr\u00e8me']",
        "kinds=[important]",
        "spurious_kinds=[background]",
        "sampling.max_tokens=6",
        "transformers.num_cpus=0.25",
        "track=false",
    ]
    cfg = load_config(ConceptsConfig, None, overrides)
    summary = job.run(cfg)
    assert summary["requests"] == 6 and summary["generation_calls"] == 6  # (2 classes + 1 pool) x 2 samples
    bank = json.loads((tmp_path / "concept_bank.json").read_text(encoding="utf-8"))
    assert bank["classes"] == ["bird", "Caf\u00e9 cr\u00e8me"]
    assert bank["counts"]["generations"] == {"error": 6}  # rows in == rows out + error rows
    assert all(e["raw"] and e["error"] for e in bank["errors"])  # the raw noise is kept with its reason
    assert bank["concepts"] == {"bird": [], "Caf\u00e9 cr\u00e8me": []}
    assert job.run(cfg)["generation_calls"] == 0


def test_vllm_processor_builds_without_running(ray_local, tmp_path):
    import ray.data.llm  # noqa: F401 - importable without vllm

    cfg = load_config(
        ConceptsConfig,
        REPO / "workflows" / "configs" / "concepts_vllm.yaml",
        [f"out={tmp_path}", "classes.source=names", "classes.names=[bird]"],
    )
    plan = job.prepare(cfg)
    assert len(plan.misses) == 3 * cfg.sampling.n_samples + len(cfg.spurious_kinds) * cfg.sampling.n_samples
    ds = job.build(cfg, plan)
    text = str(ds)
    for stage in ("ChatTemplateUDF", "TokenizeUDF", "vLLMEngineStageUDF", "DetokenizeUDF"):
        assert stage in text


def test_bad_class_lists(tmp_path):
    with pytest.raises(ConfigError, match="non-empty classes.names"):
        load_config(ConceptsConfig, None, ["classes.source=names", "classes.names=[]"])
    cfg = load_config(ConceptsConfig, None, ["classes.source=names", "classes.names=[bird, ' Bird ', tree]"])
    with pytest.raises(ValueError, match="duplicate class names"):
        job.resolve_classes(cfg)
    names = tmp_path / "classes.txt"
    names.write_text("# my classes\nbird\n\nsea_lion\n", encoding="utf-8")
    cfg = load_config(ConceptsConfig, None, ["classes.source=file", f"classes.path={names}"])
    assert job.resolve_classes(cfg) == ["bird", "sea lion"]
    import pyarrow as pa

    pq.write_table(
        pa.table({"label": [1, 0, 1], "class_name": ["tree", "bird", "tree"]}), tmp_path / "t.parquet"
    )
    cfg = load_config(
        ConceptsConfig, None, ["classes.source=table", f"classes.path={tmp_path / 't.parquet'}"]
    )
    assert job.resolve_classes(cfg) == ["bird", "tree"]
    assert job.main(["--out", str(tmp_path), "backend=vllm"]) == 2  # no model: rejected before Ray starts


@pytest.mark.parametrize(
    "path", sorted((REPO / "workflows" / "configs").glob("concepts_*.yaml")), ids=lambda p: p.name
)
def test_shipped_concepts_configs_validate(path):
    cfg = load_config(ConceptsConfig, path)
    assert cfg.backend in path.stem
