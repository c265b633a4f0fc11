"""Class balance inside appearance clusters: sampling weights that take appearance away as a cue.

Why: in the benchmark, appearance predicts the label. Clustered on generic (frozen ImageNet)
features, the Training images fall into groups that are mostly one class — e.g. clusters of
T2-looking slices that are 90 % notumor — so "looks like this cluster" is a shortcut a model
can learn instead of the tumour. Drawing images with probability ∝ n_c / (classes_c · n_{c,y})
(n_c images in cluster c, n_{c,y} of them of class y) makes every class equally frequent within
each cluster while each cluster keeps its share of the draws: the rare tumour images that look
like notumor are shown as often as the notumor images around them.
"""

from __future__ import annotations

import numpy as np


def appearance_clusters(
    features: np.ndarray, k: int = 8, components: int = 32, seed: int = 0
) -> np.ndarray:
    """k-means cluster index of each row (standardized, PCA to `components` first)."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(features)
    z = PCA(min(components, *z.shape), random_state=seed).fit_transform(z)
    return KMeans(k, n_init=4, random_state=seed).fit_predict(z)


def cluster_balanced_weights(
    clusters: np.ndarray, labels: np.ndarray, min_count: int = 10
) -> np.ndarray:
    """Per-image sampling weights (mean 1); a (cluster, class) cell counts as ≥ `min_count`
    images, so a handful of images is not repeated without bound."""
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    weights = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(clusters):
        in_c = clusters == c
        present = np.unique(labels[in_c])
        for y in present:
            cell = in_c & (labels == y)
            weights[cell] = in_c.sum() / (len(present) * max(int(cell.sum()), min_count))
    return weights / weights.mean()


def contingency(clusters: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(clusters × classes) image counts."""
    table = np.zeros((int(clusters.max()) + 1, n_classes), dtype=np.int64)
    np.add.at(table, (clusters, labels), 1)
    return table
