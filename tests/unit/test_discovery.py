"""RaVL discovery: gap, influence and the attracted class by hand, K by silhouette, a planted
cluster found first."""

from __future__ import annotations

import numpy as np
import pytest

from unspur.discovery import (
    attracted_class,
    class_gaps,
    cluster_regions,
    cosine_distance,
    discover,
    influence,
)
from unspur.metrics import precision_at_k

# 6 images, 2 classes; images 0, 1 and 4 have a region in the cluster
LABELS = np.array([0, 0, 0, 1, 1, 1])
PREDS = np.array([0, 0, 1, 1, 0, 0])
IN_CLUSTER = np.array([True, True, False, False, True, False])


def test_gap_by_hand():
    g = class_gaps(IN_CLUSTER, LABELS, PREDS == LABELS, 2)
    # class 0: in {0, 1} acc 1, out {2} acc 0 -> 2 * 1 / 3 * (1 - 0)
    # class 1: in {4} acc 0, out {3, 5} acc 0.5 -> 2 * 1 / 3 * (0 - 0.5)
    np.testing.assert_allclose(g["gap"], [2 / 3, -1 / 3])
    np.testing.assert_allclose(g["acc_in"], [1.0, 0.0])
    np.testing.assert_allclose(g["acc_out"], [0.0, 0.5])
    np.testing.assert_array_equal(g["n_in"], [2, 1])
    np.testing.assert_array_equal(g["n_out"], [1, 2])


def test_gap_is_zero_with_an_empty_side():
    g = class_gaps(np.ones(6, bool), LABELS, PREDS == LABELS, 3)
    np.testing.assert_array_equal(g["gap"], [0.0, 0.0, 0.0])
    assert np.isnan(g["acc_out"][0]) and np.isnan(g["acc_in"][2])


def test_influence_by_hand():
    # regions: image 4 -> rows 0 (in cluster, scores class 0 at 0.9) and 1 (0.1);
    # image 5 -> rows 2 (0.8) and 3 (0.2), neither in the cluster; image 3 (correct) -> row 4
    region_image = np.array([4, 4, 5, 5, 3])
    scores = np.array([[0.9, 0.1], [0.1, 0.9], [0.8, 0.2], [0.2, 0.8], [0.5, 0.5]])
    member = np.array([True, False, False, False, False])
    gaps = np.array([2 / 3, -1 / 3])
    # misclassified images of class 1 (the only negative gap) with > 1 region: 4 (hit) and 5 (miss)
    assert influence(member, region_image, scores, LABELS, PREDS, gaps) == pytest.approx(0.5)
    # an image with one region does not count
    assert influence(member, np.array([4, 4, 5, 3, 3]), scores, LABELS, PREDS, gaps) == pytest.approx(1.0)
    # no negative gap: no influence
    assert influence(member, region_image, scores, LABELS, PREDS, np.array([0.1, 0.0])) == 0.0


def test_attracted_class_by_hand():
    # 3 classes; images 1 and 2 (class 1) are predicted 2 and 0, image 3 (class 1) predicted 2
    labels, preds = np.array([0, 1, 1, 1]), np.array([0, 2, 0, 2])
    region_image = np.array([1, 1, 2, 2, 3, 3])
    scores = np.array(
        [[0, 0.1, 0.9], [0, 0.9, 0.1], [0.9, 0.1, 0], [0.1, 0.9, 0], [0, 0.2, 0.8], [0, 0.8, 0.2]]
    )
    member = np.array([True, False, False, True, True, False])
    gaps = np.array([0.5, -0.5, 0.0])
    # hits: image 1 (its top region for class 2 is row 0, in the cluster) and image 3 (row 4);
    # image 2's top region for class 0 is row 2, outside: a miss. Predictions of hits: 2, 2
    assert attracted_class(member, region_image, scores, labels, preds, gaps) == 2
    assert influence(member, region_image, scores, labels, preds, gaps) == pytest.approx(2 / 3)
    assert attracted_class(~member, region_image, scores, labels, preds, gaps) == 0  # image 2 only
    assert attracted_class(member, region_image, scores, labels, preds, -gaps) == -1  # class 0: no errors


def _blobs(n_per: int, centres: int, dim: int = 8, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [np.eye(dim)[c] + noise * rng.standard_normal((n_per, dim)) for c in range(centres)]
    )


def test_k_by_silhouette_on_separable_embeddings():
    fit = cluster_regions(_blobs(20, 3), range(2, 7), seed=0)
    assert fit.k == 3
    assert set(fit.silhouettes) == {2, 3, 4, 5, 6}
    assert max(fit.silhouettes, key=fit.silhouettes.get) == 3
    # every blob is one cluster
    for b in range(3):
        assert len(set(fit.labels[b * 20 : (b + 1) * 20])) == 1


def test_subsampled_clustering_assigns_every_region():
    fit = cluster_regions(_blobs(50, 4), range(2, 8), seed=1, max_points=60)
    assert fit.k == 4 and len(fit.labels) == 200
    assert all(len(set(fit.labels[b * 50 : (b + 1) * 50])) == 1 for b in range(4))


def test_cosine_distance_is_clipped():
    d = cosine_distance(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]]))
    np.testing.assert_allclose(d, [[0, 1, 1], [1, 0, 1], [1, 1, 0]], atol=1e-12)


def test_planted_spurious_cluster_ranks_first_with_precision_one():
    """Class 0 images mostly carry a marker region; the model predicts 0 whenever it sees it."""
    rng = np.random.default_rng(0)
    n, dim = 60, 12
    labels = np.arange(n) % 2
    marker = np.where(labels == 0, rng.random(n) < 0.7, rng.random(n) < 0.3)
    preds = np.where(marker, 0, 1)  # marker -> 0, no marker -> 1
    emb, scores, region_image, truth = [], [], [], []
    for m in range(n):
        obj = np.eye(dim)[labels[m]]  # the object region: its class direction
        other = np.eye(dim)[2] if marker[m] else np.eye(dim)[3 + m % 4]
        for vec, is_marker in ((obj, False), (other, bool(marker[m]))):
            emb.append(vec + 0.05 * rng.standard_normal(dim))
            scores.append([0.9, 0.1] if is_marker else ([0.6, 0.4] if labels[m] == 0 else [0.4, 0.6]))
            region_image.append(m)
            truth.append(is_marker)
    emb, scores, region_image, truth = (
        np.array(emb),
        np.array(scores),
        np.array(region_image),
        np.array(truth),
    )
    fit = cluster_regions(emb, range(4, 10), seed=0)
    ranked = discover(region_image, emb, scores, labels, preds, fit)
    top = ranked[0]
    assert top.candidate and top.influence == pytest.approx(1.0)
    assert top.gap[0] > 0 > top.gap[1]
    assert precision_at_k(truth[top.members], 10) == 1.0
    assert top.members[0] == top.medoid
