"""unspur.metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unspur import metrics

PREDS = [0, 1, 1, 0, 1, 0]
LABELS = [0, 1, 0, 0, 1, 1]
GROUPS = ["a/x", "b/y", "a/y", "a/x", "b/y", "b/x"]
# a/x: 2/2 right; a/y: 0/1; b/x: 0/1; b/y: 2/2 -> acc 4/6, worst 0.0 (a/y first in sorted order)


def test_accuracy_and_groups():
    assert metrics.accuracy(PREDS, LABELS) == pytest.approx(4 / 6)
    assert metrics.group_accuracies(PREDS, LABELS, GROUPS) == {"a/x": 1.0, "a/y": 0.0, "b/x": 0.0, "b/y": 1.0}
    assert metrics.worst_group_accuracy(PREDS, LABELS, GROUPS) == 0.0
    summary = metrics.summarize(PREDS, LABELS, GROUPS)
    assert summary["acc"] == pytest.approx(4 / 6) and summary["wga"] == 0.0 and summary["n"] == 6
    assert summary["worst_group"] == "a/y"
    assert summary["per_group"]["b/y"] == 1.0


def test_group_accuracy_values_between():
    preds, labels, groups = [1, 1, 0, 0, 0], [1, 0, 0, 0, 1], ["g", "g", "h", "h", "h"]
    assert metrics.group_accuracies(preds, labels, groups) == {"g": 0.5, "h": pytest.approx(2 / 3)}
    assert metrics.worst_group_accuracy(preds, labels, groups) == 0.5


def test_empty_and_mismatched_inputs():
    assert math.isnan(metrics.accuracy([], []))
    assert math.isnan(metrics.worst_group_accuracy([], [], []))
    with pytest.raises(ValueError, match="differ in length"):
        metrics.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.group_accuracies([0, 1], [0, 1], ["a"])


def test_relevance_alignment_hand_computed():
    phi = np.array(
        [
            [[0.8, 0.2], [0.0, 0.0]],  # mass in 0.8; hot {(0,0)} = mask -> iou 1; argmax in mask
            [
                [0.1, 0.6],
                [0.3, 0.0],
            ],  # mass in 0.4/1.0; hot {(0,1)} vs mask {(0,0),(1,0)} -> iou 0; pointing 0
            [[1.0, 0.0], [0.0, 0.0]],  # empty mask: left out
        ]
    )
    mask = np.array(
        [
            [[1, 0], [0, 0]],
            [[1, 0], [1, 0]],
            [[0, 0], [0, 0]],
        ],
        bool,
    )
    out = metrics.relevance_alignment(phi, mask)
    assert out["mass_in"] == pytest.approx(0.6)
    assert out["iou"] == pytest.approx(0.5)
    assert out["pointing"] == pytest.approx(0.5)
    assert out["n"] == 2
    # threshold 0.25 makes image 2 hot at {(0,1),(1,0)}: inter 1, union 3
    assert metrics.relevance_alignment(phi, mask, threshold=0.25)["iou"] == pytest.approx((1 + 1 / 3) / 2)


def test_relevance_alignment_edge_cases():
    none = metrics.relevance_alignment(np.ones((1, 2, 2)), np.zeros((1, 2, 2), bool))
    assert none["n"] == 0 and math.isnan(none["mass_in"])
    zero = metrics.relevance_alignment(np.zeros((1, 2, 2)), np.ones((1, 2, 2), bool))
    assert zero["mass_in"] == 0.0
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        metrics.relevance_alignment(np.zeros((2, 2)), np.zeros((2, 2), bool))


def test_precision_at_k():
    ranked = [True, False, True, True, False]
    assert metrics.precision_at_k(ranked, 1) == 1.0
    assert metrics.precision_at_k(ranked, 4) == 0.75
    assert metrics.precision_at_k(ranked, 5) == 0.6
    assert metrics.precision_at_k(ranked, 10) == 0.6  # fewer than k items: precision over those
    with pytest.raises(ValueError, match="k >= 1"):
        metrics.precision_at_k(ranked, 0)
