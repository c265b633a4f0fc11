"""Out-of-distribution score on the model's own features: is this a brain MRI slice at all?

The score follows Mahalanobis OOD detection (Lee et al., NeurIPS 2018) at several depths. For
each depth d (the average-pooled outputs of the backbone's last three blocks and of its last
conv stage; members concatenated for an ensemble) the distance to the nearest class mean under
one covariance shared by the classes,

    s_d(x) = min_c sqrt((f_d(x) - mu_dc)^T P_d (f_d(x) - mu_dc)),   P_d = Sigma_d^-1,

is divided by its own scale (the 99th percentile of s_d on the validation split), and the
largest ratio is the score: an image far from the training images at any depth is refused.
mu and Sigma are fitted on the training split together with augmented copies of it (the
recipe's own training augmentation: blur, low resolution, contrast, gamma, geometry), so that
such variation counts as in-distribution (Sigma: Ledoit-Wolf shrinkage of the within-class
scatter); the threshold is the quantile of the validation split's scores that accepts the asked
share (bench/fit_guard.py), or, in the shipped file, the score that leaves one validation image
above it (bench/guard_level.py, docs/RESULTS.md §16.10). docs/RESULTS.md §16 compares this
with the penultimate features alone (fewer non-MRI images refused), with more depths and with a
fit on unaugmented images (blurred scans refused), and says how it was chosen.

In the model file: tensors `guard.depth<j>.class_means` (C, F_j), `guard.depth<j>.precision`
(F_j, F_j), `guard.depth<j>.scale` (1,), metadata meta["guard"]["ood_threshold"]. Files written
before that hold one penultimate-feature distance (`guard.class_means`, `guard.precision`); they
still load and score as they did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from brainmri.infer.ood_reason import ood_threshold

GUARD_PREFIX = "guard."
MEANS_KEY = GUARD_PREFIX + "class_means"
PRECISION_KEY = GUARD_PREFIX + "precision"
SCALE_QUANTILE = 0.99
"""Each depth's distance is divided by this quantile of its validation-split values."""
AUGMENTED_COPIES = 2
"""Augmented draws of every training image added to the fit (module doc)."""


def depth_key(j: int, name: str) -> str:
    """Tensor name of depth j's statistic (class_means, precision or scale)."""
    return f"{GUARD_PREFIX}depth{j}.{name}"


class OODScore(nn.Module):
    """Guard features (one (N, F_j) tensor per depth) -> the largest scaled Mahalanobis distance
    to the nearest class mean (N,). `source` says which features it reads: "depths" (pooled
    backbone depths) or "penultimate" (the head's Dense+SiLU output, files of before §16)."""

    def __init__(
        self,
        class_means: list[torch.Tensor],
        precisions: list[torch.Tensor],
        scales: list[float] | None = None,
        source: str = "depths",
    ):
        super().__init__()
        scales = [1.0] * len(class_means) if scales is None else list(scales)
        if not class_means or not len(class_means) == len(precisions) == len(scales):
            raise ValueError("one class-means, precision and scale per depth are needed")
        for mu, p in zip(class_means, precisions, strict=True):
            if mu.ndim != 2 or p.shape != (mu.shape[1],) * 2:
                raise ValueError(
                    f"class means {tuple(mu.shape)} and precision {tuple(p.shape)} do not fit"
                )
        self.source = source
        self.means = nn.ParameterList(
            nn.Parameter(m.float().contiguous(), requires_grad=False) for m in class_means
        )
        self.precisions = nn.ParameterList(
            nn.Parameter(p.float().contiguous(), requires_grad=False) for p in precisions
        )
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32))

    @property
    def widths(self) -> list[int]:
        return [int(m.shape[1]) for m in self.means]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = []
        for j, f in enumerate(features):
            d = f.float()[:, None, :] - self.means[j][None]  # (N, C, F)
            sq = ((d @ self.precisions[j]) * d).sum(dim=-1)  # (N, C)
            out.append(sq.min(dim=1).values.clamp_min(0.0).sqrt() / self.scales[j])
        return torch.stack(out, dim=1).max(dim=1).values


def fit_statistics(
    features: np.ndarray, labels: np.ndarray, n_classes: int
) -> dict[str, torch.Tensor]:
    """Class means and the shrunk shared precision of one depth's training features, as
    tensors `guard.class_means`, `guard.precision`, `guard.shrinkage`."""
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


def augmented_planes(
    planes: torch.Tensor, augment_cfg: Any, copies: int = AUGMENTED_COPIES, seed: int = 0
) -> torch.Tensor:
    """`copies` draws of the training augmentation (`augment_cfg`: a recipe's AugmentConfig)
    of uint8 planes (N, 1, S, S), back as uint8, seeded so a refit repeats them."""
    from brainmri.data.mri_augment import TrainAugment

    aug = TrainAugment(augment_cfg)
    gen = torch.Generator().manual_seed(seed)
    out = [planes[:0]]
    with torch.inference_mode():
        for _ in range(copies):
            for s in range(0, len(planes), 256):
                x = aug(planes[s : s + 256], generator=gen)
                out.append((x * 255).round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def fit_depths(
    train: list[torch.Tensor], labels: torch.Tensor, held: list[torch.Tensor], n_classes: int
) -> tuple[dict[str, torch.Tensor], OODScore]:
    """Per-depth statistics from training features, scales from held-out (validation)
    features: (`guard.depth<j>.*` tensors, the scorer they make)."""
    tensors: dict[str, torch.Tensor] = {}
    means, precisions, scales = [], [], []
    for j, (f_tr, f_held) in enumerate(zip(train, held, strict=True)):
        stats = fit_statistics(f_tr.numpy(), labels.numpy(), n_classes)
        one = OODScore([stats[MEANS_KEY]], [stats[PRECISION_KEY]], source="depths")
        with torch.inference_mode():
            scale = float(np.quantile(one([f_held]).numpy(), SCALE_QUANTILE))
        means.append(stats[MEANS_KEY])
        precisions.append(stats[PRECISION_KEY])
        scales.append(scale)
        for name, key in (("class_means", MEANS_KEY), ("precision", PRECISION_KEY)):
            tensors[depth_key(j, name)] = stats[key]
        tensors[depth_key(j, "shrinkage")] = stats[GUARD_PREFIX + "shrinkage"]
        tensors[depth_key(j, "scale")] = torch.tensor([scale], dtype=torch.float32)
    return tensors, OODScore(means, precisions, scales, source="depths").eval()


def threshold_for(scores: np.ndarray, accept: float = 0.99) -> float:
    """The score under which `accept` of the given (in-distribution) scores fall."""
    if not 0.0 < accept <= 1.0:
        raise ValueError(f"accept must be in (0, 1], got {accept}")
    return float(np.quantile(np.asarray(scores, dtype=np.float64), accept, method="higher"))


def ood_from_meta(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> OODScore | None:
    """The scorer from a model file's `guard.` tensors; None when the file has none."""
    n_classes = len(meta.get("class_names", [])) or None
    if depth_key(0, "class_means") in tensors:
        n_depths = 0
        while depth_key(n_depths, "class_means") in tensors:
            n_depths += 1
        means = [tensors[depth_key(j, "class_means")] for j in range(n_depths)]
        precisions = [tensors[depth_key(j, "precision")] for j in range(n_depths)]
        scales = [float(tensors[depth_key(j, "scale")][0]) for j in range(n_depths)]
        source = "depths"
    elif MEANS_KEY in tensors and PRECISION_KEY in tensors:
        means, precisions, scales = [tensors[MEANS_KEY]], [tensors[PRECISION_KEY]], None
        source = "penultimate"
    else:
        return None
    for mu in means:
        if n_classes is not None and mu.shape[0] != n_classes:
            raise ValueError(
                f"guard statistics hold {mu.shape[0]} class means for {n_classes} classes"
            )
    return OODScore(means, precisions, scales, source).eval()


def guard_inputs(
    model: nn.Module, x: torch.Tensor, source: str
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(penultimate features, the features a scorer of this `source` reads) of a model input
    batch, from one forward pass."""
    if source == "depths":
        return model.penultimate_and_depths(x)
    if source != "penultimate":
        raise ValueError(f"unknown guard feature source {source!r}")
    penultimate = model.penultimate(x)
    return penultimate, [penultimate]


@torch.inference_mode()
def guard_features(
    model: nn.Module,
    images: torch.Tensor,
    intensity: str = "none",
    channels_last: bool = True,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    source: str = "depths",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(guard features: one (N, F_j) tensor per depth, logits (N, C)) of uint8 (N, 1, S, S)
    planes, preprocessed as predict does (x / 255 -> intensity normalization -> ImageNet
    mean/std, 3 channels). source "penultimate": the one penultimate-feature tensor."""
    from brainmri.data.transforms import normalize_planes, to_model_input

    model.eval()
    parts: list[list[torch.Tensor]] = []
    logits = []
    for start in range(0, len(images), batch_size):
        x = normalize_planes(images[start : start + batch_size].to(device), intensity)
        pen, feats = guard_inputs(model, to_model_input(x, channels_last), source)
        parts.append([f.float().cpu() for f in feats])
        logits.append(model.classify(pen).float().cpu())
    if not parts:
        return [], torch.empty((0, 0))
    return [torch.cat(p) for p in zip(*parts, strict=True)], torch.cat(logits)


def penultimate_features(
    model: nn.Module,
    images: torch.Tensor,
    intensity: str = "none",
    channels_last: bool = True,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate features (N, F), logits (N, C)) of uint8 planes, as guard_features."""
    feats, logits = guard_features(
        model, images, intensity, channels_last, batch_size, device, "penultimate"
    )
    return (feats[0] if feats else torch.empty((0, 0))), logits


def load_guard(path: str | Path) -> tuple[OODScore | None, float | None]:
    """(scorer, threshold) stored in a model file; (None, None) when it has no statistics."""
    from safetensors import safe_open

    from brainmri.model.checkpoint import read_metadata

    meta = read_metadata(Path(path))
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k).float() for k in f.keys() if k.startswith(GUARD_PREFIX)}
    scorer = ood_from_meta(meta, tensors)
    return scorer, (ood_threshold(meta) if scorer is not None else None)
