"""The training loss, class weights and the softmax temperature fitted on validation."""

from __future__ import annotations

import math
from typing import Any

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


TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The range the temperature is searched in; a fit that ends on either end did not converge."""


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Temperature T in TEMPERATURE_BOUNDS minimizing the NLL of softmax(logits / T) (search on
    log T). See `temperature_bound` for a fit that ended on a bound, and `every_one_right` for
    a validation set without a wrong answer (no minimum inside: the value is not informative)."""
    from scipy.optimize import minimize_scalar

    z, y = logits.double(), labels

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    res = minimize_scalar(nll, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    return float(math.exp(res.x))


def temperature_bound(temperature: float) -> str | None:
    """'lower' or 'upper' when a fitted temperature sits on that end of the search range (the
    NLL kept falling towards it: no calibrating temperature inside), else None."""
    for name, bound in zip(("lower", "upper"), TEMPERATURE_BOUNDS, strict=True):
        if abs(math.log(temperature / bound)) < 1e-3:
            return name
    return None


def every_one_right(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """True when every row's top logit is its label's: the NLL then keeps falling as the
    temperature shrinks, so its fit ends on the lower bound or wherever the NLL stops changing,
    and the temperature says nothing about calibration."""
    return len(labels) > 0 and bool((logits.argmax(dim=-1) == labels).all())


def temperature_fit(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """`fit_temperature` and what the fit says about itself, as every run file records it:
    {"temperature", "temperature_at_bound", "temperature_all_right"}."""
    temperature = fit_temperature(logits, labels)
    return {
        "temperature": temperature,
        "temperature_at_bound": temperature_bound(temperature) is not None,
        "temperature_all_right": every_one_right(logits, labels),
    }


def temperature_note(temperature: float, all_right: bool = False) -> str:
    """The fitted temperature as a console figure, with why it is not a calibration when the
    fit ended on a bound or every validation image was classified right (`every_one_right`)."""
    why = {
        "upper": "validation too small or the model is not trained",
        "lower": "validation too small or every validation image classified right",
    }
    bound = temperature_bound(temperature)
    if all_right:
        where = f"at the fit's {bound} bound: " if bound else ""
        return (
            f"{temperature:.3f} ({where}every validation image classified right, so the "
            "temperature is not informative; probabilities may be over-confident)"
        )
    if bound is None:
        return f"{temperature:.3f}"
    return (
        f"{temperature:.3f} (at the fit's {bound} bound: {why[bound]}; probabilities are not "
        "calibrated)"
    )
