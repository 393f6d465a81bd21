"""RaVL discovery (METHODS.md 2.2): cluster region embeddings, score clusters by gap and influence.

Inputs (pure numpy): N regions of M images, ``region_image`` (N,) the index of each region's
image, ``embeddings`` (N, D) (L2-normalised here), ``scores`` (N, C) per-class zero-shot scores
of each region; per image ``labels`` (M,) and ``preds`` (M,) (the model's zero-shot prediction of
the whole image).

1. Clustering: K-medoids (FasterPAM, ``kmedoids``) on the cosine distance ``1 - r.r'`` clipped
   to [0, 1], for every K of ``k_values`` (RaVL: range(2C, 5C)); the K with the best mean
   silhouette is kept. With more than ``max_points`` regions, a seeded random subset is
   clustered and every region joins its nearest medoid.
2. Per cluster and class l: "in" = images of class l with >= 1 region in the cluster, "out" = the
   other images of class l; ``gap_l = 2 min(n_in, n_out) / (n_in + n_out) * (acc_in - acc_out)``
   (0 when either side is empty).
3. Influence: for each class l with gap_l < 0, over the misclassified images of class l with more
   than one region, the fraction whose region scoring highest for the PREDICTED class lies in the
   cluster; the cluster's influence is the max over those classes (0 without any). The class the
   feature is tied to is the most frequent predicted class of those hits (the class it pulls
   predictions to; :func:`attracted_class`).
4. A cluster is a candidate when some gap > 0, some gap < 0 and influence >= ``min_influence``;
   candidates are ranked by sum_l |gap_l| (ties: larger cluster first), then the other clusters by
   the same score (so a ranking always exists; ``candidate`` tells them apart).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "ClusterFit",
    "ClusterScore",
    "attracted_class",
    "class_gaps",
    "cluster_regions",
    "cosine_distance",
    "discover",
    "influence",
    "rank_clusters",
]


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_distance(a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """(N, D), (M, D) -> (N, M) ``1 - cos``, clipped to [0, 1] (b None: a against itself)."""
    a = _normalise(a)
    b = a if b is None else _normalise(b)
    return np.clip(1.0 - a @ b.T, 0.0, 1.0)


@dataclass
class ClusterFit:
    """The kept clustering: ``k``, ``labels`` (N,) cluster of every region, ``medoids`` (k,)
    region indices, ``silhouettes`` {K: mean silhouette} of every K tried."""

    k: int
    labels: np.ndarray
    medoids: np.ndarray
    silhouettes: dict[int, float] = field(default_factory=dict)


def cluster_regions(
    embeddings: np.ndarray, k_values: range | list[int], seed: int = 0, max_points: int = 4000
) -> ClusterFit:
    """K-medoids over ``k_values`` on the cosine distance, best mean silhouette kept (see module)."""
    import kmedoids

    n = len(embeddings)
    ks = sorted({int(k) for k in k_values if 2 <= int(k) < n})
    if not ks:
        raise ValueError(f"no K of {list(k_values)} fits {n} regions (need 2 <= K < number of regions)")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=max_points, replace=False)) if n > max_points else np.arange(n)
    dist = cosine_distance(embeddings[sample])
    best: tuple[float, int, np.ndarray] | None = None
    silhouettes: dict[int, float] = {}
    for k in ks:
        if k >= len(sample):
            break
        fit = kmedoids.fasterpam(dist, k, init="build", random_state=seed, n_cpu=1)
        score = float(kmedoids.silhouette(dist, np.asarray(fit.labels))[0])
        silhouettes[k] = score
        if best is None or score > best[0]:
            best = (score, k, np.asarray(fit.medoids))
    assert best is not None  # ks is non-empty and ks[0] < len(sample)
    medoids = sample[best[2]]
    labels = cosine_distance(embeddings, embeddings[medoids]).argmin(1)
    return ClusterFit(best[1], labels, medoids, silhouettes)


def class_gaps(
    in_cluster: np.ndarray, labels: np.ndarray, correct: np.ndarray, n_classes: int
) -> dict[str, np.ndarray]:
    """Per class: ``gap``, ``acc_in``, ``acc_out`` (nan when that side is empty), ``n_in``, ``n_out``.

    in_cluster (M,) bool: the image has a region in the cluster; labels (M,) int; correct (M,) bool.
    """
    in_cluster, labels, correct = (np.asarray(v) for v in (in_cluster, labels, correct))
    out = {k: np.zeros(n_classes) for k in ("gap", "acc_in", "acc_out", "n_in", "n_out")}
    for c in range(n_classes):
        mine = labels == c
        a, b = mine & in_cluster, mine & ~in_cluster
        n_in, n_out = int(a.sum()), int(b.sum())
        acc_in = float(correct[a].mean()) if n_in else np.nan
        acc_out = float(correct[b].mean()) if n_out else np.nan
        gap = 2 * min(n_in, n_out) / (n_in + n_out) * (acc_in - acc_out) if n_in and n_out else 0.0
        for key, value in zip(out, (gap, acc_in, acc_out, n_in, n_out), strict=True):
            out[key][c] = value
    return out


def _influence_hits(
    member: np.ndarray,
    region_image: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    gaps: np.ndarray,
) -> dict[int, list[tuple[int, bool]]]:
    """Per class with a negative gap: (predicted class, hit) of each of its misclassified images
    with more than one region; hit = its region scoring highest for the predicted class is in the
    cluster."""
    member, region_image, scores = np.asarray(member, bool), np.asarray(region_image), np.asarray(scores)
    counts = np.bincount(region_image, minlength=len(labels))
    order = np.argsort(region_image, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    found: dict[int, list[tuple[int, bool]]] = {}
    for c in np.flatnonzero(np.asarray(gaps) < 0):
        images = np.flatnonzero((labels == c) & (preds != labels) & (counts > 1))
        found[int(c)] = [
            (int(preds[m]), bool(member[rows[np.argmax(scores[rows, preds[m]])]]))
            for m in images
            for rows in [order[starts[m] : starts[m + 1]]]
        ]
    return found


def influence(
    member: np.ndarray,
    region_image: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    gaps: np.ndarray,
) -> float:
    """The cluster's influence (module docstring, step 3). member (N,) bool: region in the cluster;
    region_image (N,), scores (N, C); labels, preds (M,); gaps (C,)."""
    return _influence_of(_influence_hits(member, region_image, scores, labels, preds, gaps))


def attracted_class(
    member: np.ndarray,
    region_image: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    gaps: np.ndarray,
) -> int:
    """The class the cluster's feature pulls predictions to: the most frequent predicted class of
    the influence's hits (step 3's misclassified images whose region scoring highest for the
    predicted class lies in the cluster); ties to the smaller class, -1 without any hit."""
    return _attracted_of(_influence_hits(member, region_image, scores, labels, preds, gaps))


def _influence_of(hits: dict[int, list[tuple[int, bool]]]) -> float:
    return max((sum(h for _, h in found) / len(found) for found in hits.values() if found), default=0.0)


def _attracted_of(hits: dict[int, list[tuple[int, bool]]]) -> int:
    pulled = [pred for found in hits.values() for pred, hit in found if hit]
    return int(np.bincount(pulled).argmax()) if pulled else -1


@dataclass
class ClusterScore:
    """One cluster's scores: ``cluster`` id, ``medoid`` region index, ``members`` region indices
    sorted by cosine similarity to the medoid (most similar first), per-class ``gap``, ``acc_in``,
    ``acc_out``, ``n_in``, ``n_out`` (C,), ``influence``, ``score`` = sum |gap|, ``candidate``,
    ``attracted`` (:func:`attracted_class`, -1 = none)."""

    cluster: int
    medoid: int
    members: np.ndarray
    gap: np.ndarray
    acc_in: np.ndarray
    acc_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray
    influence: float
    score: float
    candidate: bool
    attracted: int = -1


def rank_clusters(scored: list[ClusterScore]) -> list[ClusterScore]:
    """Candidates by score (ties: larger cluster), then the others by score."""
    return sorted(scored, key=lambda s: (not s.candidate, -s.score, -len(s.members), s.cluster))


def discover(
    region_image: np.ndarray,
    embeddings: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    fit: ClusterFit,
    min_influence: float = 0.25,
) -> list[ClusterScore]:
    """Score every cluster of ``fit`` (module docstring, steps 2-4) -> ranked :class:`ClusterScore`."""
    region_image, labels, preds = np.asarray(region_image), np.asarray(labels), np.asarray(preds)
    n_classes = int(np.asarray(scores).shape[1])
    correct = preds == labels
    scored = []
    for k, medoid in enumerate(fit.medoids):
        member = fit.labels == k
        idx = np.flatnonzero(member)
        sim = 1.0 - cosine_distance(embeddings[idx], embeddings[[medoid]])[:, 0]
        members = idx[np.argsort(-sim, kind="stable")]
        in_cluster = np.zeros(len(labels), dtype=bool)
        in_cluster[region_image[idx]] = True
        g = class_gaps(in_cluster, labels, correct, n_classes)
        hits = _influence_hits(member, region_image, scores, labels, preds, g["gap"])  # once for both
        infl, attracted = _influence_of(hits), _attracted_of(hits)
        mixed = bool((g["gap"] > 0).any() and (g["gap"] < 0).any())
        scored.append(
            ClusterScore(
                k,
                int(medoid),
                members,
                g["gap"],
                g["acc_in"],
                g["acc_out"],
                g["n_in"].astype(int),
                g["n_out"].astype(int),
                infl,
                float(np.abs(g["gap"]).sum()),
                mixed and infl >= min_influence,
                attracted,
            )
        )
    return rank_clusters(scored)
