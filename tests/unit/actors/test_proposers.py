"""Proposer backends: wordnet, bank, transformers (tiny model), vllm row functions, registry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unspur.actors.concepts import ANSWER_SCHEMA, CONCEPT_PROMPTS, parse_answer
from unspur.actors.proposers import (
    PROPOSERS,
    REQUEST_COLUMNS,
    BankProposer,
    TransformersProposer,
    VLLMRowFunctions,
    WordNetMissingError,
    WordNetProposer,
    load_wordnet,
    wordnet_concepts,
)


def _batch(rows):
    full = [
        {"request_id": f"r{i}", "sample": 0, "seed": i, "source": "s", "class_name": "", **r}
        for i, r in enumerate(rows)
    ]
    return {k: np.array([r[k] for r in full], dtype=object) for k in REQUEST_COLUMNS}


@pytest.fixture(scope="module")
def wn():
    return load_wordnet()


def _concepts(wn, name, kind, **kw):
    items, reason = wordnet_concepts(wn, name, kind, **kw)
    return {i["concept"]: i["score"] for i in items}, reason


def test_wordnet_parts_and_superclasses(wn):
    parts, reason = _concepts(wn, "bird", "important")
    assert reason == "" and {"beak", "wing", "feather"} <= set(parts)
    assert parts["beak"] == 1.0 and parts["talon"] == 0.5  # bird's foot -> talon, one level down
    assert "drumstick" not in parts  # bird.n.02 (the meat) is listed, not expanded
    bicycle, _ = _concepts(wn, "bicycle", "important")
    assert {"bicycle wheel", "handlebar", "pedal", "spoke"} <= set(bicycle)
    direct, _ = _concepts(wn, "bicycle", "important", meronym_depth=1)
    assert "spoke" not in direct
    supers, _ = _concepts(wn, "bird", "superclass", hypernym_depth=2)
    assert supers == {"vertebrate": 1.0, "chordate": 0.5}
    synonyms, _ = _concepts(wn, "tree", "important", lemmas="all")
    assert {"trunk", "tree trunk", "bole"} <= set(synonyms)


@pytest.mark.parametrize(
    ("name", "kind", "synset", "match"),
    [
        ("qwxzzy", "important", None, "no noun sense of 'qwxzzy'"),
        ("caf\u00e9 cr\u00e8me", "important", None, "no noun sense"),
        ("bird", "important", "bird.n.99", "does not know"),
        ("bird", "around", None, "no relation for kind 'around'"),
    ],
)
def test_wordnet_unknowns_give_empty_results_with_a_reason(wn, name, kind, synset, match):
    items, reason = wordnet_concepts(wn, name, kind, synset=synset)
    assert items == [] and match in reason


def test_wordnet_proposer_batch(wn):
    prop = WordNetProposer(synsets={"crane": "crane.n.05"})
    out = prop(
        _batch(
            [
                {"family": "concept", "class_name": "crane", "kind": "superclass"},
                {"family": "concept", "class_name": "qwxzzy", "kind": "important"},
                {"family": "spurious", "kind": "background"},
                {"family": "spurious", "kind": "weather"},
            ]
        )
    )
    assert list(out["failed"]) == [False, False, False, False]
    assert "bird" in {i["concept"] for i in json.loads(out["raw"][0])}  # crane.n.05 is the bird
    assert parse_answer(out["raw"][1]).status == "empty" and "no noun sense" in out["error"][1]
    background = parse_answer(out["raw"][2])  # WordNet has no templates: the built-in bank answers
    assert background.status == "ok" and out["error"][2] == ""
    assert "a photo of a {class} in the snow." in {t for t, _ in background.items}
    assert out["raw"][3] == "[]" and "no kind 'weather'" in out["error"][3]
    assert list(out["request_id"]) == ["r0", "r1", "r2", "r3"]


def test_missing_wordnet_names_the_install_commands(monkeypatch, tmp_path):
    import nltk
    from nltk.corpus import CorpusReader
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    fresh = LazyCorpusLoader(
        "wordnet",
        WordNetCorpusReader,
        LazyCorpusLoader("omw-1.4", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8"),
    )
    monkeypatch.setattr(nltk.corpus, "wordnet", fresh)
    with pytest.raises(WordNetMissingError, match="apt-get install wordnet-base wordnet-sense-index"):
        load_wordnet()


def test_bank_proposer_short_form(tmp_path):
    path = tmp_path / "bank.yaml"
    path.write_text(
        "concepts:\n"
        "  bird: {important: [beak, {concept: wing, score: 0.5}], superclass: [animal]}\n"
        "  Caf\u00e9: [espresso cup]\n"
        "spurious_templates:\n  background: ['a photo of a {class} in the snow.']\n",
        encoding="utf-8",
    )
    prop = BankProposer(str(path))
    out = prop(
        _batch(
            [
                {"family": "concept", "class_name": "bird", "kind": "important"},
                {"family": "concept", "class_name": "caf\u00e9", "kind": "important"},
                {"family": "concept", "class_name": "bird", "kind": "around"},
                {"family": "concept", "class_name": "tree", "kind": "important"},
                {"family": "spurious", "kind": "background"},
                {"family": "spurious", "kind": "texture"},
            ]
        )
    )
    parsed = [parse_answer(r) for r in out["raw"]]
    assert parsed[0].items == [("beak", 1.0), ("wing", 0.5)]
    assert parsed[1].items == [("espresso cup", 1.0)]
    assert parsed[2].status == "empty" and "no 'around' concepts" in out["error"][2]
    assert parsed[3].status == "empty" and "not in the bank" in out["error"][3]
    assert parsed[4].items == [("a photo of a {class} in the snow.", 1.0)]
    assert parsed[5].status == "empty" and "no spurious templates" in out["error"][5]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("- just a list\n", "top-level 'concepts'"),
        ("concepts: {bird: {colour: [red]}}\n", "unknown kinds"),
        ("concepts: {bird: [[nested]]}\n", "neither a string"),
    ],
)
def test_bad_bank_files(tmp_path, text, match):
    path = tmp_path / "bank.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        BankProposer(str(path))


def test_transformers_proposer_noise_and_silence(tiny_causal_lm):
    rows = [
        {"family": "concept", "class_name": "bird", "kind": "important"},
        {"family": "spurious", "kind": "background"},
    ]
    noisy = TransformersProposer(tiny_causal_lm(), max_tokens=6)
    first = noisy(_batch(rows))
    again = noisy(_batch(rows))
    assert list(first["failed"]) == [False, False]
    assert all(r.strip() for r in first["raw"]) and list(first["raw"]) == list(again["raw"])  # seeded
    assert [parse_answer(r).status for r in first["raw"]] == ["error", "error"]  # noise is no list
    silent = TransformersProposer(tiny_causal_lm(silent=True), max_tokens=6)
    out = silent(_batch(rows[:1]))
    assert out["raw"][0] == "" and "returned no text" in parse_answer(out["raw"][0]).error


def test_transformers_proposer_failure_is_a_failed_row(tiny_causal_lm):
    prop = TransformersProposer(tiny_causal_lm(), max_tokens=4)
    out = prop(_batch([{"family": "concept", "class_name": "bird", "kind": "colour"}]))
    assert bool(out["failed"][0]) and "unknown concept kind" in out["error"][0]


def test_vllm_row_functions():
    fns = VLLMRowFunctions(temperature=0.7, top_p=0.9, max_tokens=64, structured=True)
    row = {
        "request_id": "r",
        "family": "concept",
        "class_name": "bird",
        "kind": "around",
        "sample": 1,
        "seed": 1,
        "source": "vllm:m:v",
    }
    pre = fns.preprocess(row)
    assert pre["messages"][-1]["content"].endswith('"bird":')
    params = pre["sampling_params"]
    assert params["seed"] == 1 and params["max_tokens"] == 64 and params["temperature"] == 0.7
    assert json.loads(params["structured_outputs"]["json"]) == ANSWER_SCHEMA
    assert "structured_outputs" not in VLLMRowFunctions(structured=False).preprocess(row)["sampling_params"]
    post = fns.postprocess({**row, **pre, "generated_text": '["a nest"]', "num_generated_tokens": 4})
    assert set(post) == {*REQUEST_COLUMNS, "raw", "error", "failed"}
    assert post["raw"] == '["a nest"]' and post["failed"] is False


@pytest.mark.parametrize("name", sorted(PROPOSERS))
def test_registry_specs_are_consistent(name):
    spec = PROPOSERS[name]
    assert spec.name == name and set(spec.kinds) <= set(CONCEPT_PROMPTS)
    for kind in set(CONCEPT_PROMPTS) - set(spec.kinds):
        assert spec.unavailable.get(kind), f"{name} must say why {kind} is unavailable"
    if not spec.spurious:
        assert spec.unavailable.get("spurious")
    assert (spec.actor is None) == (name == "vllm")
