"""Concept validation statistics on hand-made masks (occurrence, coverage, decisions, bank)."""

from __future__ import annotations

import numpy as np
import pytest

from unspur.concept_validation import concept_statistics, decide, select_validation_images, validated_bank
from unspur.masks import encode


def _box(y0: int, y1: int, x0: int, x1: int, size: int = 10) -> np.ndarray:
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = True
    return m


OBJECT = _box(0, 10, 0, 5)  # 50 px


def _row(image_id, concept, mask=None, status=None, cls="bird"):
    status = status or ("ok" if mask is not None else "empty")
    return {
        "image_id": image_id,
        "class_name": cls,
        "concept": concept,
        "status": status,
        "rle": encode(mask) if mask is not None else None,
    }


def _rows():
    return [
        # image 1: body covers the whole object (IoU 1), beak 5 px inside it (IoU 0.1)
        _row("i1", "body", OBJECT),
        _row("i1", "beak", _box(0, 1, 0, 5)),
        _row("i1", "sky", None),
        # image 2: body covers half the object (IoU 0.5); beak not found
        _row("i2", "body", _box(0, 5, 0, 5)),
        _row("i2", "beak", None),
        _row("i2", "sky", None),
        # image 3: unreadable -> counts nowhere
        _row("i3", "body", status="error"),
        _row("i3", "beak", status="error"),
        _row("i3", "sky", status="error"),
        # image 4: sky found outside the object (IoU 0), body found (IoU 1)
        _row("i4", "body", OBJECT),
        _row("i4", "beak", None),
        _row("i4", "sky", _box(0, 10, 5, 10)),
    ]


def test_occurrence_and_coverage_against_the_object_mask():
    objects = {i: encode(OBJECT) for i in ("i1", "i2", "i3", "i4")}
    stats = {s.concept: s for s in concept_statistics(_rows(), objects)}
    body, beak, sky = stats["body"], stats["beak"], stats["sky"]
    assert (body.n_images, body.n_detected) == (3, 3)  # the error image is not counted
    assert body.occurrence == pytest.approx(1.0)
    assert body.coverage == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert beak.occurrence == pytest.approx(1 / 3) and beak.coverage == pytest.approx(0.1)
    assert sky.occurrence == pytest.approx(1 / 3) and sky.coverage == pytest.approx(0.0)


def test_coverage_falls_back_to_the_union_of_the_class_concepts():
    stats = {s.concept: s for s in concept_statistics(_rows(), object_masks=None)}
    # i1: union = object (50 px): body 1.0, beak 0.1; i2: union = body -> 1.0; i4: union = full image (100 px)
    assert stats["body"].coverage == pytest.approx((1.0 + 1.0 + 0.5) / 3)
    assert stats["beak"].coverage == pytest.approx(0.1)
    assert stats["sky"].coverage == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("occ", "cov", "kept"),
    [
        (0.15, 0.2, {"body"}),
        (0.0, 0.0, {"body", "beak", "sky"}),
        (0.4, 0.05, {"body"}),
        (0.3, 0.05, {"body", "beak"}),
        (1.0, 0.9, set()),
    ],
)
def test_decide_applies_both_thresholds(occ, cov, kept):
    objects = {i: encode(OBJECT) for i in ("i1", "i2", "i4")}
    stats = decide(concept_statistics(_rows(), objects), occ, cov)
    assert {s.concept for s in stats if s.kept} == kept
    for s in stats:
        assert s.kept == (not s.detail)


def test_concept_without_usable_images_is_dropped():
    rows = [_row("i1", "beak", status="error")]
    (s,) = decide(concept_statistics(rows), 0.0, 0.0)
    assert not s.kept and "no usable" in s.detail


def test_validated_bank_moves_failures_to_dropped_with_statistics():
    bank = {
        "format": "unspur.concept_bank/1",
        "classes": ["bird"],
        "concepts": {
            "bird": [
                {"concept": "body", "kind": "important", "source": "s", "score": 0.9},
                {"concept": "beak", "kind": "important", "source": "s", "score": 0.8},
                {"concept": "animal", "kind": "superclass", "source": "s", "score": 0.7},
            ]
        },
        "dropped": {
            "bird": [{"concept": "x", "kind": "around", "source": "s", "score": 0.1, "reason": "length"}]
        },
    }
    stats = decide(
        concept_statistics(
            [r for r in _rows() if r["concept"] != "sky"], {i: OBJECT for i in ("i1", "i2", "i4")}
        ),
        0.15,
        0.2,
    )
    out = validated_bank(bank, stats, {"min_occurrence": 0.15, "min_coverage": 0.2})
    assert [e["concept"] for e in out["concepts"]["bird"]] == ["body", "animal"]  # superclass untouched
    assert out["concepts"]["bird"][0]["validation"]["occurrence"] == pytest.approx(1.0)
    dropped = out["dropped"]["bird"]
    assert [e["concept"] for e in dropped] == ["x", "beak"]
    assert dropped[1]["reason"] == "validation" and "coverage 0.100 < 0.2" in dropped[1]["detail"]
    assert out["validation"]["kept"] == 1 and out["validation"]["dropped"] == 1
    assert bank["concepts"]["bird"][1]["concept"] == "beak"  # the input is not modified


def test_select_validation_images_is_deterministic_capped_and_order_free():
    ids = [f"img-{i:03d}" for i in range(40)] + ["img-000"]
    classes = ["a" if i % 2 else "b" for i in range(40)] + ["b"]
    first = select_validation_images(ids, classes, 5)
    again = select_validation_images(ids[::-1], classes[::-1], 5)
    assert first == again
    assert {k: len(v) for k, v in first.items()} == {"a": 5, "b": 5}
    assert all(classes[ids.index(i)] == cls for cls, members in first.items() for i in members)
    assert select_validation_images(ids, classes, 100, wanted=["a"]).keys() == {"a"}
    assert len(select_validation_images(ids, classes, 100)["b"]) == 20  # the repeated id counts once
