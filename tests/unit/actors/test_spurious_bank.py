"""The built-in spurious template bank: well-formed pools that survive the template filters and
reach the concept bank through the offline (wordnet) backend, in the LLM route's shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unspur.actors.concepts import PLACEHOLDER, ConceptFilter, collect_candidates, parse_answer
from unspur.actors.proposers import PROPOSERS, REQUEST_COLUMNS, WordNetProposer
from unspur.actors.spurious_bank import SPURIOUS_TEMPLATES, offline_templates, template_answer
from unspur.concept_bank import BANK_FORMAT, ConceptBank, assemble_bank, load_bank, spurious_captions
from unspur.config.concepts import ConceptsConfig

CLASSES = ["bird", "airplane", "bicycle", "tree"]
KINDS = ("background", "texture", "resolution")


def test_pools_are_well_formed():
    assert set(KINDS) <= set(SPURIOUS_TEMPLATES)
    for kind, pool in SPURIOUS_TEMPLATES.items():
        assert 15 <= len(pool) <= 30, kind
        assert len(set(pool)) == len(pool), f"{kind} repeats a template"
        for t in pool:
            assert t.count(PLACEHOLDER) == 1 and len(t) <= 80 and t == t.strip(), t
    assert offline_templates("weather") == ()
    raw, reason = template_answer("texture")
    assert reason == "" and [i["concept"] for i in json.loads(raw)] == list(SPURIOUS_TEMPLATES["texture"])


def test_spurious_captions_fill_the_class():
    assert spurious_captions(["a photo of a {class} in the snow.", "a striped {class}."], "bird") == [
        "a photo of a bird in the snow.",
        "a striped bird.",
    ]
    with pytest.raises(ValueError, match="no {class} placeholder"):
        spurious_captions(["a photo of a bird."], "bird")


def test_wordnet_backend_answers_spurious_kinds_offline():
    spec = PROPOSERS["wordnet"]
    assert spec.spurious and "spurious" not in spec.unavailable and not spec.llm
    cfg = ConceptsConfig(backend="wordnet", spurious_kinds=list(KINDS))
    assert cfg.spurious_kinds == list(KINDS)


@pytest.fixture(scope="module")
def wordnet_proposer():
    return WordNetProposer()


def test_offline_concepts_run_fills_the_banks_spurious_templates(wordnet_proposer, tmp_path):
    """The concept stage's pure steps on the offline backend: propose -> parse -> merge -> the
    template filters (MiniLM) -> assemble -> write -> load; every kind keeps most of its pool."""
    rows = [
        {
            "request_id": f"r{i}",
            "family": "spurious",
            "class_name": "",
            "kind": k,
            "sample": 0,
            "seed": 0,
            "source": "wordnet:",
        }
        for i, k in enumerate(KINDS)
    ]
    batch = {c: np.array([r[c] for r in rows], dtype=object) for c in REQUEST_COLUMNS}
    out = wordnet_proposer(batch)
    parsed = []
    for i, row in enumerate(rows):
        answer = parse_answer(out["raw"][i])
        parsed.append(
            {**row, "status": answer.status, "items": answer.items, "error": "", "raw": out["raw"][i]}
        )
    cands = collect_candidates(parsed)
    filt = ConceptFilter(
        CLASSES,
        encoder={"name": "minilm"},
        filters={
            "max_length": 30,
            "class_similarity": 0.85,
            "duplicate_similarity": 0.9,
            "template_max_length": 80,
        },
    )
    decided = filt(
        {
            "family": np.array(["spurious"], dtype=object),
            "candidates": np.array([json.dumps(cands)], dtype=object),
        }
    )
    decisions = json.loads(decided["decisions"][0])
    doc = assemble_bank(CLASSES, decisions, parsed, {"around": "n/a"}, {"backend": "wordnet"})
    (tmp_path / "concept_bank.json").write_text(json.dumps(doc))
    bank = load_bank(tmp_path)
    assert bank.data["format"] == BANK_FORMAT and set(bank.data["spurious_templates"]) == set(KINDS)
    for kind in KINDS:
        kept = bank.templates([kind])
        assert len(kept) >= 0.8 * len(SPURIOUS_TEMPLATES[kind]), (
            kind,
            bank.data["spurious_dropped"].get(kind),
        )
        assert all(t.count(PLACEHOLDER) == 1 for t in kept)
        entry = bank.data["spurious_templates"][kind][0]
        assert set(entry) == {"template", "source", "score"} and entry["source"] == "wordnet:"
    captions = bank.spurious_captions("bird", ["background"])
    assert captions[0] == bank.templates(["background"])[0].replace(PLACEHOLDER, "bird")
    assert all("bird" in c and PLACEHOLDER not in c for c in captions)
    assert isinstance(bank, ConceptBank) and bank.data["counts"]["templates_kept"]["texture"] >= 12
