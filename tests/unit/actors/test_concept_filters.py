"""The Label-free CBM filters against hand-made embeddings, and the MiniLM filter actor."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unspur.actors.concepts import ConceptFilter, filter_concepts, filter_templates


class TableEncoder:
    """A text encoder over a hand-made table of vectors (unit-normalised)."""

    name = "table"

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = {k: np.asarray(v, dtype=np.float32) / np.linalg.norm(v) for k, v in vectors.items()}

    def encode(self, texts):
        return np.stack([self.vectors[t] for t in texts]) if texts else np.zeros((0, 4), np.float32)


def _cand(text, cls="bird", kind="important", family="concept"):
    return {"family": family, "class_name": cls, "kind": kind, "text": text, "source": "s", "score": 1.0}


def _by_text(out):
    return {(d["class_name"], d["kind"], d["text"]): (d["status"], d["reason"]) for d in out}


ENC = TableEncoder(
    {
        "bird": [1, 0, 0, 0],
        "tree": [0, 0, 0, 1],
        "beak": [0.3, 1, 0, 0],  # cos to bird 0.29
        "birdy thing": [1, 0.2, 0, 0],  # cos to bird 0.98
        "wing": [0.3, 1, 0.3, 0],
        "wings": [0.3, 1, 0.25, 0],
        "tail": [0.2, 0.4, 1, 0],  # wing~wings 0.999
        "exactly thirty characters long": [0, 0.1, 0.2, 0.2],
    }
)


def test_length_then_class_name_then_similarity_in_order():
    cands = [
        _cand("exactly thirty characters long"),
        _cand("thirty-one characters long here"),
        _cand("bird"),
        _cand("a bird"),
        _cand("the tree"),
        _cand("birdy thing"),
        _cand("beak"),
        _cand("bird", cls="tree", kind="around"),
    ]
    out = filter_concepts(cands, ["bird", "tree"], ENC, max_length=30, class_similarity=0.85)
    got = _by_text(out)
    assert got[("bird", "important", "exactly thirty characters long")] == ("kept", "")
    assert got[("bird", "important", "thirty-one characters long here")] == ("dropped", "too_long")
    assert got[("bird", "important", "bird")] == ("dropped", "class_name")
    assert got[("bird", "important", "a bird")] == ("dropped", "class_name")
    assert got[("bird", "important", "the tree")] == ("dropped", "class_name")  # ANY class
    assert got[("tree", "around", "bird")] == ("dropped", "class_name")
    assert got[("bird", "important", "birdy thing")] == ("dropped", "similar_to_class")
    assert got[("bird", "important", "beak")] == ("kept", "")
    detail = next(d["detail"] for d in out if d["text"] == "birdy thing")
    assert "'bird'" in detail and ">= 0.85" in detail
    assert len(out) == len(cands)  # every candidate comes back with a decision


def test_class_similarity_threshold_is_inclusive():
    enc = TableEncoder({"bird": [1, 0, 0], "avian": [1, 0, 0], "beak": [0, 1, 0]})
    out = filter_concepts([_cand("avian"), _cand("beak")], ["bird"], enc, class_similarity=1.0)
    assert _by_text(out)[("bird", "important", "avian")] == ("dropped", "similar_to_class")


def test_near_duplicates_drop_the_one_closer_to_the_rest():
    # wing ~ wings; the one with the larger summed similarity to the rest (tail included) goes
    vec = {t: ENC.vectors[t] for t in ("wing", "wings", "tail")}
    s = {(a, b): float(vec[a] @ vec[b]) for a in vec for b in vec}
    total = {t: sum(s[(t, o)] for o in vec if o != t) for t in vec}
    loser = max(("wing", "wings"), key=lambda t: total[t])
    keeper = ({"wing", "wings"} - {loser}).pop()
    cands = [
        _cand("wing"),
        _cand("wings"),
        _cand("tail"),
        _cand("wing", kind="superclass"),
        _cand("wings", cls="tree"),
    ]
    out = filter_concepts(cands, ["bird", "tree"], ENC, duplicate_similarity=0.9)
    got = _by_text(out)
    assert got[("bird", "important", loser)] == ("dropped", "near_duplicate")
    assert got[("bird", "important", keeper)] == ("kept", "")
    assert got[("bird", "important", "tail")] == ("kept", "")
    # duplicates are looked for within one class and kind only
    assert got[("bird", "superclass", "wing")] == ("kept", "")
    assert got[("tree", "important", "wings")] == ("kept", "")
    assert repr(keeper) in next(d["detail"] for d in out if d["reason"] == "near_duplicate")


def test_no_candidates_left_needs_no_encoder():
    class Boom:
        def encode(self, texts):
            raise AssertionError("encoder must not run")

    out = filter_concepts([_cand("bird")], ["bird"], Boom())
    assert _by_text(out)[("bird", "important", "bird")] == ("dropped", "class_name")


def test_template_filters():
    enc = TableEncoder(
        {
            "a photo of a object in the snow.": [1, 0, 0],
            "a photo of an object in snow.": [1, 0.05, 0],
            "striped object.": [0, 1, 0],
        }
    )
    texts = [
        "a photo of a {class} in the snow.",
        "a photo of an {class} in snow.",
        "striped {class}.",
        "a photo in the snow.",
        "{class} next to a {class}.",
        "a {class} " + "very " * 20 + "blurry",
        "a photo of a bird near a {class}.",
    ]
    out = filter_templates(
        [_cand(t, cls="", kind="background", family="spurious") for t in texts],
        ["bird", "tree"],
        enc,
        max_length=80,
        duplicate_similarity=0.9,
    )
    got = {d["text"]: (d["status"], d["reason"]) for d in out}
    assert got["striped {class}."] == ("kept", "")
    assert got["a photo in the snow."] == ("dropped", "no_placeholder")
    assert got["{class} next to a {class}."] == ("dropped", "no_placeholder")
    assert got[texts[5]] == ("dropped", "too_long")
    assert got["a photo of a bird near a {class}."] == ("dropped", "class_name")
    snow = [got[texts[0]], got[texts[1]]]
    assert sorted(snow) == [("dropped", "near_duplicate"), ("kept", "")]


@pytest.fixture(scope="module")
def minilm_filter():
    return ConceptFilter(
        ["bird", "airplane", "bicycle", "tree"],
        encoder={"name": "minilm"},
        filters={
            "max_length": 30,
            "class_similarity": 0.85,
            "duplicate_similarity": 0.9,
            "template_max_length": 80,
        },
    )


def test_minilm_filter_actor_keeps_part_names_and_drops_class_synonyms(minilm_filter):
    """Measured with all-MiniLM-L6-v2: part names stay below 0.85 to every class name
    ("bicycle wheel" vs "bicycle" 0.76, "tree trunk" vs "tree" 0.83), synonyms do not
    ("bike" vs "bicycle" 0.92, "airplanes" vs "airplane" 0.89)."""
    concepts = [_cand(t, cls="bicycle") for t in ("bicycle wheel", "handlebar", "pedal", "bike", "a bicycle")]
    concepts += [_cand(t, cls="tree") for t in ("tree trunk", "crown", "limb")]
    concepts += [_cand("airplanes", cls="airplane")]
    templates = [_cand("a photo of a {class} in the snow.", cls="", kind="background", family="spurious")]
    batch = {
        "family": np.array(["concept", "spurious"], dtype=object),
        "candidates": np.array([json.dumps(concepts), json.dumps(templates)], dtype=object),
    }
    out = minilm_filter(batch)
    got = _by_text(json.loads(out["decisions"][0]))
    for text in ("bicycle wheel", "handlebar", "pedal"):
        assert got[("bicycle", "important", text)] == ("kept", "")
    for text in ("tree trunk", "crown", "limb"):
        assert got[("tree", "important", text)] == ("kept", "")
    assert got[("bicycle", "important", "bike")] == ("dropped", "similar_to_class")
    assert got[("bicycle", "important", "a bicycle")] == ("dropped", "class_name")
    assert got[("airplane", "important", "airplanes")] == ("dropped", "similar_to_class")
    assert json.loads(out["decisions"][1])[0]["status"] == "kept"
