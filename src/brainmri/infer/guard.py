"""Out-of-distribution score on the model's own features: is this a brain MRI slice at all?

The score is the Mahalanobis distance (Lee et al., NeurIPS 2018) of an image's penultimate
features (the head's Dense+SiLU output, members concatenated for an ensemble) to the nearest
class mean, under one covariance shared by the classes:

    score(x) = min_c sqrt((f(x) - mu_c)^T P (f(x) - mu_c)),   P = Sigma^-1

mu_c and Sigma are fitted on the training split (Sigma: Ledoit-Wolf shrinkage of the
within-class scatter, so P exists whatever the feature width); the threshold is the quantile of
the validation split's scores that accepts the asked share (99 %). Both live in the model file:
tensors `guard.class_means` (C, F) and `guard.precision` (F, F), and metadata
`guard.ood_threshold` (meta["guard"]["ood_threshold"]) with how they were fitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainmri.errors import RejectedInput

GUARD_PREFIX = "guard."
MEANS_KEY = GUARD_PREFIX + "class_means"
PRECISION_KEY = GUARD_PREFIX + "precision"


class OODScore(nn.Module):
    """Penultimate features (N, F) -> Mahalanobis distance to the nearest class mean (N,)."""

    def __init__(self, class_means: torch.Tensor, precision: torch.Tensor):
        super().__init__()
        if class_means.ndim != 2 or precision.shape != (class_means.shape[1],) * 2:
            raise ValueError(
                f"class means {tuple(class_means.shape)} and precision "
                f"{tuple(precision.shape)} do not fit together"
            )
        self.register_buffer("class_means", class_means.float().contiguous())
        self.register_buffer("precision", precision.float().contiguous())

    @property
    def width(self) -> int:
        return int(self.class_means.shape[1])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        d = features.float()[:, None, :] - self.class_means[None]  # (N, C, F)
        sq = ((d @ self.precision) * d).sum(dim=-1)  # (N, C)
        return sq.min(dim=1).values.clamp_min(0.0).sqrt()


def fit_statistics(
    features: np.ndarray, labels: np.ndarray, n_classes: int
) -> dict[str, torch.Tensor]:
    """Class means and the shrunk shared precision of training features, as `guard.` tensors."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    missing = [c for c in range(n_classes) if not np.any(y == c)]
    if missing:
        raise ValueError(f"no training features for classes {missing}")
    means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
    centered = x - means[y]
    lw = LedoitWolf(assume_centered=True).fit(centered)
    return {
        MEANS_KEY: torch.from_numpy(means.astype(np.float32)),
        PRECISION_KEY: torch.from_numpy(lw.precision_.astype(np.float32)),
        GUARD_PREFIX + "shrinkage": torch.tensor([lw.shrinkage_], dtype=torch.float32),
    }


def threshold_for(scores: np.ndarray, accept: float = 0.99) -> float:
    """The score under which `accept` of the given (in-distribution) scores fall."""
    if not 0.0 < accept <= 1.0:
        raise ValueError(f"accept must be in (0, 1], got {accept}")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), accept, method="higher"))


def ood_from_meta(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> OODScore | None:
    """The scorer from a model file's `guard.` tensors; None when the file has none."""
    if MEANS_KEY not in tensors or PRECISION_KEY not in tensors:
        return None
    n_classes = len(meta.get("class_names", [])) or tensors[MEANS_KEY].shape[0]
    if tensors[MEANS_KEY].shape[0] != n_classes:
        raise ValueError(
            f"guard statistics hold {tensors[MEANS_KEY].shape[0]} class means for "
            f"{n_classes} classes"
        )
    return OODScore(tensors[MEANS_KEY], tensors[PRECISION_KEY]).eval()


def ood_threshold(meta: dict[str, Any]) -> float | None:
    """meta["guard"]["ood_threshold"] (or a flat "guard.ood_threshold"); None when absent."""
    guard = meta.get("guard")
    value = guard.get("ood_threshold") if isinstance(guard, dict) else None
    if value is None:
        value = meta.get("guard.ood_threshold")
    return None if value is None else float(value)


def ood_reason(score: float | None, threshold: float | None) -> str | None:
    """The rejection reason for a score over the threshold, else None."""
    if score is None or threshold is None:
        return None
    if not np.isfinite(score):
        return f"not a brain MRI (OOD score {score})"
    if score <= threshold:
        return None
    return f"not a brain MRI (OOD score {score:.0f} > {threshold:.0f})"


def check_ood(score: float | None, threshold: float | None) -> None:
    """Raise RejectedInput when the score is over the threshold."""
    reason = ood_reason(score, threshold)
    if reason is not None:
        raise RejectedInput(reason, code="ood")


@torch.inference_mode()
def penultimate_features(
    model: nn.Module,
    images: torch.Tensor,
    intensity: str = "none",
    channels_last: bool = True,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, F), logits (N, C)) of uint8 (N, 1, S, S) planes, preprocessed as predict
    does (x / 255 -> intensity normalization -> ImageNet mean/std, 3 channels)."""
    from brainmri.data.transforms import normalize_planes, to_model_input

    model.eval()
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        x = normalize_planes(images[start : start + batch_size].to(device), intensity)
        f = model.penultimate(to_model_input(x, channels_last))
        feats.append(f.float().cpu())
        logits.append(model.classify(f).float().cpu())
    if not feats:
        return torch.empty((0, 0)), torch.empty((0, 0))
    return torch.cat(feats), torch.cat(logits)


def load_guard(path: str | Path) -> tuple[OODScore | None, float | None]:
    """(scorer, threshold) stored in a model file; (None, None) when it has no statistics."""
    from safetensors import safe_open

    from brainmri.model.checkpoint import read_metadata

    meta = read_metadata(Path(path))
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k).float() for k in f.keys() if k.startswith(GUARD_PREFIX)}
    scorer = ood_from_meta(meta, tensors)
    return scorer, (ood_threshold(meta) if scorer is not None else None)
