"""Grouped, leak-free train/validation split of a Training folder.

The benchmark's Training folder holds many re-processed copies of one slice (contrast,
sharpening, re-encoding). A per-image split puts copies on both sides, so validation scores
memory. Here the unit of the split is a *group*: a connected component of the graph whose
edges are exact copies (equal sha256) and near copies (24×24 thumbnail correlation above
`SPLIT_THRESHOLD`, see data/dedupe.py). scikit-learn's `StratifiedGroupKFold` (seeded,
shuffled) then deals whole groups into k = round(1 / val_fraction) folds with the class mix
of each fold close to the whole; fold 0 is validation. No copy of a validation image is left
in train, at the threshold or above.

The split is written as splits/{train,val}.txt plus splits/split.json (method, threshold,
seed, group counts), which `train` checks against the recipe and stores in the model file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from brainmri.data.dedupe import (
    Features,
    UnionFind,
    compute_features,
    cross_copies,
    exact_groups,
    near_pairs,
    stack_vectors,
)
from brainmri.data.folders import Sample, read_file_list, write_file_list
from brainmri.errors import BrainMRIError

SPLIT_THRESHOLD = 0.98
"""Near-copy threshold of the groups. Pairs between 0.98 and 0.995 on the benchmark are the
same slice re-processed or a neighbouring slice of the same scan (README, "Validation split"),
so they belong together; 0.995 alone left 133 such copies across a split."""
METHOD = "StratifiedGroupKFold over exact+near duplicate components"
SPLIT_INFO = "split.json"


@dataclass(frozen=True)
class SplitInfo:
    """What made a split: recorded in splits/split.json, the run folder and the model file."""

    method: str
    near_threshold: float
    seed: int
    val_fraction: float
    folds: int
    groups: int
    multi_file_groups: int
    files_in_multi_file_groups: int
    n_train: int
    n_val: int

    def to_dict(self) -> dict:
        return asdict(self)


def folds_for(val_fraction: float) -> int:
    """Number of folds whose one fold is about val_fraction of the data (k = round(1/f))."""
    if not 0.0 < val_fraction <= 0.5:
        raise BrainMRIError(
            f"val_fraction must be in (0, 0.5] (a validation split is needed), got {val_fraction}"
        )
    return max(2, round(1.0 / val_fraction))


def duplicate_components(features: Sequence[Features], threshold: float) -> np.ndarray:
    """Component id per file over exact + near (> threshold) copy edges (ids 0..G-1)."""
    n = len(features)
    uf = UnionFind(n)
    for group in exact_groups([f.sha256 for f in features]):
        for a in group[1:]:
            uf.union(group[0], a)
    for a, b, _ in near_pairs(stack_vectors(f.vector for f in features), None, threshold):
        uf.union(a, b)
    roots = [uf.find(i) for i in range(n)]
    _, ids = np.unique(np.array(roots, dtype=np.int64), return_inverse=True)
    return ids.astype(np.int64)


def grouped_split(
    samples: Sequence[Sample],
    val_fraction: float,
    seed: int,
    threshold: float = SPLIT_THRESHOLD,
    features: Sequence[Features] | None = None,
    workers: int | None = None,
) -> tuple[list[Sample], list[Sample], SplitInfo]:
    """Split samples into (train, val) by duplicate groups, stratified by class.

    `features` (one per sample, same order) are computed from the files when not given.
    Depends only on the file contents, the sorted file list and the seed.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    k = folds_for(val_fraction)
    order = sorted(range(len(samples)), key=lambda i: (samples[i].label, str(samples[i].path)))
    ordered = [samples[i] for i in order]
    if features is None:
        feats = compute_features([s.path for s in ordered], workers)
    else:
        feats = [features[i] for i in order]
    groups = duplicate_components(feats, threshold)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_groups < k:
        raise BrainMRIError(
            f"{len(samples)} training images form only {n_groups} duplicate groups: too few "
            f"for a validation fraction of {val_fraction} ({k} folds)"
        )
    labels = np.array([s.label for s in ordered])
    if np.bincount(labels).max() < k:
        raise BrainMRIError(
            f"no class has {k} training images: too few for a validation fraction of "
            f"{val_fraction} ({k} folds)"
        )
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    train_idx, val_idx = next(cv.split(np.zeros(len(ordered)), labels, groups))
    sizes = np.bincount(groups, minlength=n_groups)
    info = SplitInfo(
        method=METHOD,
        near_threshold=threshold,
        seed=seed,
        val_fraction=val_fraction,
        folds=k,
        groups=n_groups,
        multi_file_groups=int((sizes > 1).sum()),
        files_in_multi_file_groups=int(sizes[sizes > 1].sum()),
        n_train=len(train_idx),
        n_val=len(val_idx),
    )
    return [ordered[i] for i in train_idx], [ordered[i] for i in val_idx], info


def check_validation(val: Sequence[Sample], where: str) -> None:
    """An empty or single-class validation split cannot choose anything: a user error."""
    classes = {s.label for s in val}
    if len(classes) < 2:
        raise BrainMRIError(
            f"the validation split of {where} has {len(val)} images in {len(classes)} class(es): "
            "it needs images of at least two classes (raise data.val_fraction or add images)"
        )


def write_split(
    split_dir: Path, train: list[Sample], val: list[Sample], info: SplitInfo, root: Path
) -> None:
    """splits/train.txt, splits/val.txt (paths relative to root) and splits/split.json."""
    write_file_list(split_dir / "train.txt", train, root)
    write_file_list(split_dir / "val.txt", val, root)
    (split_dir / SPLIT_INFO).write_text(json.dumps(info.to_dict(), indent=2) + "\n")


def read_split(split_dir: Path, root: Path) -> tuple[list[Sample], list[Sample], SplitInfo]:
    """Read a split written by write_split; one written without split.json is refused."""
    meta = split_dir / SPLIT_INFO
    if not meta.is_file():
        raise BrainMRIError(
            f"{split_dir} has no {SPLIT_INFO}: it was written by an older `brainmri clean`, "
            "whose validation split holds copies of training images; run `brainmri clean` again"
        )
    try:
        info = SplitInfo(**json.loads(meta.read_text()))
    except (TypeError, ValueError) as exc:
        raise BrainMRIError(f"{meta} is not a split description: {exc}") from exc
    train = read_file_list(split_dir / "train.txt", root)
    val = read_file_list(split_dir / "val.txt", root)
    return train, val, info


def leak_counts(
    train: Sequence[Features], val: Sequence[Features], thresholds: Sequence[float] = (0.995, 0.98)
) -> dict[str, int]:
    """Validation images with a copy in train: byte-identical; exact or near at each threshold."""
    low = min(thresholds)
    pairs = cross_copies(list(val), list(train), low)
    out = {"val": len(val), "exact": len({i for i, _, kind, _ in pairs if kind == "exact"})}
    for t in thresholds:
        out[f"near_{t}"] = len({i for i, _, kind, c in pairs if kind == "exact" or c > t})
    return out
