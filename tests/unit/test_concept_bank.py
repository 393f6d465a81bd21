"""The concept bank document: assembly, the Python API the mask stage reads, user bank files."""

from __future__ import annotations

import json

import pytest

from unspur.concept_bank import BANK_FORMAT, assemble_bank, bank_table_rows, load_bank, read_bank_source


def _d(cls, kind, text, status="kept", reason="", score=1.0, family="concept"):
    return {
        "family": family,
        "class_name": cls,
        "kind": kind,
        "text": text,
        "source": "wordnet:wordnet-3.0",
        "score": score,
        "status": status,
        "reason": reason,
        "detail": "d" if reason else "",
    }


DECISIONS = [
    _d("bird", "important", "wing", score=0.5),
    _d("bird", "important", "beak"),
    _d("bird", "superclass", "animal"),
    _d("bird", "important", "bird", "dropped", "class_name"),
    _d("", "background", "a photo of a {class} in the snow.", family="spurious"),
    _d("", "background", "{class} snow", "dropped", "near_duplicate", family="spurious"),
]
GENERATIONS = [
    {
        "class_name": "bird",
        "family": "concept",
        "kind": "important",
        "sample": 0,
        "status": "ok",
        "error": "",
        "raw": "[]",
    },
    {
        "class_name": "xyzzy",
        "family": "concept",
        "kind": "important",
        "sample": 0,
        "status": "empty",
        "error": "WordNet has no noun sense of 'xyzzy'",
        "raw": "[]",
    },
]


@pytest.fixture
def bank():
    return assemble_bank(
        ["bird", "xyzzy"], DECISIONS, GENERATIONS, {"around": "no relation"}, {"backend": "x"}
    )


def test_assembled_bank_follows_the_contract(bank):
    assert bank["format"] == BANK_FORMAT and bank["classes"] == ["bird", "xyzzy"]
    assert [(c["concept"], c["kind"]) for c in bank["concepts"]["bird"]] == [
        ("beak", "important"),
        ("wing", "important"),
        ("animal", "superclass"),
    ]  # by kind, best first
    assert set(bank["concepts"]["bird"][0]) == {"concept", "kind", "source", "score"}
    assert bank["dropped"]["bird"][0]["reason"] == "class_name"
    assert bank["concepts"]["xyzzy"] == [] and bank["errors"][0]["class_name"] == "xyzzy"
    assert bank["spurious_templates"]["background"][0]["template"] == "a photo of a {class} in the snow."
    assert bank["counts"]["important_per_class"] == {"bird": 2, "xyzzy": 0}
    assert bank["counts"]["dropped"] == {"class_name": 1}
    assert bank["unavailable"] == {"around": "no relation"}
    rows = bank_table_rows(bank)
    assert len(rows) == len(DECISIONS)
    assert {(r["family"], r["status"]) for r in rows} == {
        ("concept", "kept"),
        ("concept", "dropped"),
        ("spurious", "kept"),
        ("spurious", "dropped"),
    }


def test_load_bank_api(bank, tmp_path):
    (tmp_path / "concept_bank.json").write_text(json.dumps(bank))
    loaded = load_bank(tmp_path)  # the folder or the file
    assert loaded.classes == ["bird", "xyzzy"]
    assert loaded.concepts("bird") == ["beak", "wing"]
    assert loaded.by_kind("bird") == {"important": ["beak", "wing"], "superclass": ["animal"], "around": []}
    assert loaded.per_class() == {"bird": ["beak", "wing"], "xyzzy": []}
    assert loaded.templates() == ["a photo of a {class} in the snow."]
    assert loaded.templates(["texture"]) == []
    with pytest.raises(KeyError, match="not in the concept bank"):
        loaded.concepts("tree")
    # the written bank is also a valid user bank (backend: bank)
    source = read_bank_source(tmp_path / "concept_bank.json")
    assert source["concepts"]["bird"]["important"] == [("beak", 1.0), ("wing", 0.5)]
    assert source["spurious_templates"]["background"] == [("a photo of a {class} in the snow.", 1.0)]


def test_load_bank_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="unspur concepts"):
        load_bank(tmp_path)
    (tmp_path / "concept_bank.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a concept bank"):
        load_bank(tmp_path)
    with pytest.raises(FileNotFoundError, match="bank_path"):
        read_bank_source(tmp_path / "missing.yaml")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid"):
        read_bank_source(tmp_path / "bad.json")
