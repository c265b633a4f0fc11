"""A run's data: the grouped train/validation split, decoded once into uint8 tensors.

The split comes from the data folder's splits/ (written by `brainmri clean`, checked against
the recipe) or is drawn here over the Training folder (data/splits.py); either way it is
grouped by duplicate components, so validation holds no copy of a training image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from brainmri import CLASS_NAMES
from brainmri.config import ModelConfig, Recipe, recipe_from_dict
from brainmri.data.balance import appearance_clusters, cluster_balanced_weights, contingency
from brainmri.data.cache import cache_samples
from brainmri.data.folders import Sample, class_counts, scan_split, stratified_split
from brainmri.data.splits import METHOD as GROUPED_METHOD
from brainmri.data.splits import check_validation, grouped_split, read_split
from brainmri.errors import BrainMRIError


def split_seed(recipe: Recipe) -> int:
    """The seed of the train/val split: data.split_seed, else the recipe seed."""
    return recipe.seed if recipe.data.split_seed is None else recipe.data.split_seed


def _check_recorded(recipe: Recipe, info: dict, split_dir: Path) -> None:
    """A recipe asking for another split than the folder's splits/ is refused, not ignored."""
    want = (recipe.data.val_fraction, split_seed(recipe))
    have = (info["val_fraction"], info["seed"])
    if abs(want[0] - have[0]) > 1e-9 or want[1] != have[1]:
        raise BrainMRIError(
            f"{split_dir} holds the split of val_fraction {have[0]}, seed {have[1]} (from "
            f"`brainmri clean`), but the recipe asks for val_fraction {want[0]}, split seed "
            f"{want[1]}: pass --set data.val_fraction={have[0]} --set data.split_seed={have[1]}, "
            "or re-run clean with --val-fraction/--seed"
        )


def load_split(data_dir: Path, recipe: Recipe) -> tuple[list[Sample], list[Sample], dict]:
    """(train, val, split description) for a recipe; max_per_class caps both after the split."""
    split_dir = Path(data_dir) / "splits"
    if (split_dir / "train.txt").is_file() and (split_dir / "val.txt").is_file():
        train, val, info = read_split(split_dir, Path(data_dir))
        split = info.to_dict() | {"source": "splits/ of the data folder"}
        _check_recorded(recipe, split, split_dir)
    else:
        samples = scan_split(Path(data_dir), "Training")
        if not samples:
            raise BrainMRIError(f"no Training/<class>/ images under {data_dir}")
        train, val, info = grouped_split(samples, recipe.data.val_fraction, split_seed(recipe))
        split = info.to_dict() | {"source": "drawn from Training/ by train"}
    cap = recipe.data.max_per_class
    if cap:
        train = [
            s for k in range(len(CLASS_NAMES)) for s in [t for t in train if t.label == k][:cap]
        ]
        val = [s for k in range(len(CLASS_NAMES)) for s in [t for t in val if t.label == k][:cap]]
    check_validation(val, str(data_dir))
    return train, val, split


@dataclass
class RunData:
    """The decoded split: uint8 (N, 1, S, S) images and int64 labels."""

    train: list[Sample]
    val: list[Sample]
    split: dict
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor

    @property
    def counts(self) -> list[int]:
        return class_counts(self.train)


def load_data(data_dir: Path, recipe: Recipe, device: torch.device) -> RunData:
    """Split, then decode every image once (train images moved to a CUDA device if used)."""
    train, val, split = load_split(data_dir, recipe)
    size = recipe.data.image_size
    x_train, y_train = cache_samples(train, size, desc="decode train")
    x_val, y_val = cache_samples(val, size, desc="decode val")
    if device.type == "cuda":
        x_train, y_train = x_train.to(device), y_train.to(device)
    return RunData(train, val, split, x_train, y_train, x_val, y_val)


def model_split(data_dir: Path, meta: dict) -> tuple[list[Sample], list[Sample], dict]:
    """A model file's own (train, val) files of a benchmark folder, rebuilt from its metadata:
    the grouped split when its training recorded one (every model trained since the grouped
    split exists), else the older per-image stratified split."""
    recipe = recipe_from_dict(meta["recipe"], "model metadata")
    seed = split_seed(recipe)
    samples = scan_split(Path(data_dir), "Training")
    recorded = meta.get("info", {}).get("split", {})
    if recorded.get("method") == GROUPED_METHOD:
        train, val, info = grouped_split(samples, recipe.data.val_fraction, seed)
        if (info.n_train, info.n_val) != (recorded["n_train"], recorded["n_val"]):
            raise BrainMRIError(
                f"split rebuilt as {info.n_train}/{info.n_val} files, the model recorded "
                f"{recorded['n_train']}/{recorded['n_val']}: not the data it was trained on"
            )
        method = "grouped"
    else:
        train, val = stratified_split(samples, recipe.data.val_fraction, seed)
        method = "stratified (older models)"
    return train, val, {"split_seed": seed, "val_fraction": recipe.data.val_fraction,
                        "split": method}


@torch.inference_mode()
def appearance_weights(
    x: torch.Tensor, labels: np.ndarray, k: int, min_count: int, seed: int, batch: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(per-image draw weights, clusters × classes counts): class balance inside k appearance
    clusters of uint8 images. Clusters come from frozen ImageNet Lite0 features (whatever the
    model's backbone): generic appearance, not what a model learns."""
    from brainmri.data.transforms import to_model_input
    from brainmri.model.classifier import TumorClassifier

    net = TumorClassifier(ModelConfig()).eval()
    x = x.cpu()
    feats = torch.cat(
        [
            net.features(to_model_input(x[i : i + batch], channels_last=True))
            for i in range(0, len(x), batch)
        ]
    ).numpy()
    clusters = appearance_clusters(feats, k=k, seed=seed)
    weights = cluster_balanced_weights(clusters, labels, min_count)
    return np.asarray(weights, dtype=np.float64), contingency(clusters, labels, len(CLASS_NAMES))


def appearance_draw_weights(data: RunData, recipe: Recipe) -> torch.Tensor:
    """Per-image draw weights of `data.balance: clusters`; the clusters × classes counts are
    recorded in `data.split["draws"]`."""
    cfg = recipe.data
    labels = data.y_train.cpu().numpy()
    weights, table = appearance_weights(
        data.x_train, labels, cfg.balance_clusters, cfg.balance_min_count, recipe.seed
    )
    data.split["draws"] = {
        "method": "class balance inside appearance clusters",
        "clusters": cfg.balance_clusters,
        "min_count": cfg.balance_min_count,
        "clusters_x_classes": table.tolist(),
    }
    return torch.from_numpy(weights)
