"""Class balance inside appearance clusters: the weights equalize classes per cluster."""

from __future__ import annotations

import numpy as np

from brainmri.data.balance import appearance_clusters, cluster_balanced_weights, contingency


def test_weights_equalize_classes_inside_each_cluster_and_keep_cluster_mass():
    # cluster 0: 90 notumor (2) and 10 glioma (0); cluster 1: 50 / 50 meningioma (1) / pituitary (3)
    clusters = np.array([0] * 100 + [1] * 100)
    labels = np.array([2] * 90 + [0] * 10 + [1] * 50 + [3] * 50)
    w = cluster_balanced_weights(clusters, labels)
    assert np.isclose(w.mean(), 1.0)
    assert np.isclose(w[labels == 0].sum(), w[labels == 2].sum())  # 10 rare ones = 90 common ones
    assert np.isclose(w[clusters == 0].sum(), w[clusters == 1].sum())  # clusters keep their share
    assert np.allclose(w[clusters == 1], 1.0)  # an already balanced cluster is left alone


def test_tiny_cells_are_not_repeated_without_bound():
    clusters = np.zeros(101, dtype=int)
    labels = np.array([2] * 100 + [0])
    w = cluster_balanced_weights(clusters, labels, min_count=10)
    # the single glioma counts as 10 images: a tenth of the cluster's glioma share, not all of it
    assert np.isclose(w[100] / w[0], 100 / 10)


def test_clusters_follow_appearance_and_contingency_counts():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (60, 20))
    b = rng.normal(8, 1, (40, 20))
    clusters = appearance_clusters(np.vstack([a, b]), k=2, components=5)
    assert len(set(clusters[:60])) == 1 and len(set(clusters[60:])) == 1
    assert clusters[0] != clusters[60]
    table = contingency(clusters, np.array([0] * 60 + [3] * 40), 4)
    assert table.sum() == 100 and sorted(table[:, 0].tolist()) == [0, 60]
