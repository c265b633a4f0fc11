"""The training loss, class weights and the softmax temperature fitted on validation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def class_weights(counts: list[int]) -> torch.Tensor:
    """total / (classes · count) per class (Keras 'balanced')."""
    total, k = sum(counts), len(counts)
    return torch.tensor([total / (k * max(c, 1)) for c in counts], dtype=torch.float32)


def weighted_smoothed_ce(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None, smoothing: float
) -> torch.Tensor:
    """Mean over the batch of w[y] · CE(label-smoothed target, softmax(logits)).

    Not torch's weighted `reduction="mean"` (which divides by Σ w[y]): each sample's loss is
    scaled by its class weight and the batch mean is a plain mean.
    """
    per_sample = F.cross_entropy(
        logits.float(), labels, label_smoothing=smoothing, reduction="none"
    )
    if weights is not None:
        per_sample = per_sample * weights[labels]
    return per_sample.mean()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature T in [0.05, 20] minimizing the NLL of softmax(logits / T) (search on log T)."""
    from scipy.optimize import minimize_scalar

    z, y = logits.double(), labels

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    res = minimize_scalar(
        nll, bounds=(math.log(0.05), math.log(20.0)), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(res.x))
