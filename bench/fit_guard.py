"""Fit the input guard's OOD statistics for a model and store them in its model file.

The model's own split is rebuilt as training did it (benchmark Training folder, the recipe's
val_fraction and data.split_seed; grouped when the model recorded a grouped split). At each
depth the guard reads (infer/guard.py), features of the training part and of `--copies`
augmented draws of it (the recipe's training augmentation) give the class means and the shared
(Ledoit-Wolf) covariance, and the validation part gives the depth's scale; the
validation part's scores then give the threshold that accepts `--accept` of them (default
99.5 %, docs/RESULTS.md §16.1). The file is rewritten with tensors `guard.*` (old ones dropped)
and metadata `guard`; its weights are copied bit for bit and the script checks that, and that
the logits on the validation images are unchanged.

    python bench/fit_guard.py [--model src/brainmri/weights/lite0_cpu.safetensors] \
        [--data ../shared/data/brain-tumor-mri] [--accept 0.995] \
        [--out bench/results/shipped/guard_fit.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from robustness import model_data_args, report_head
from safetensors.torch import load_file

from brainmri.config import recipe_from_dict
from brainmri.data.cache import cache_samples
from brainmri.data.folders import resolve_data_dir
from brainmri.infer.core import InferenceModel, load_for_inference
from brainmri.infer.guard import (
    AUGMENTED_COPIES,
    GUARD_PREFIX,
    SCALE_QUANTILE,
    OODScore,
    augmented_planes,
    depth_key,
    fit_depths,
    guard_features,
    threshold_for,
)
from brainmri.model.checkpoint import add_extra_tensors, read_metadata, shipped_model_path
from brainmri.train.data import model_split


def weights_digest(path: Path) -> str:
    """sha256 over every non-guard tensor (name, dtype, shape, bytes), in name order."""
    h = hashlib.sha256()
    for k, v in sorted(load_file(str(path)).items()):
        if k.startswith(GUARD_PREFIX):
            continue
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument("--accept", type=float, default=0.995, help="validation share accepted")
    ap.add_argument("--out", type=Path, default=Path("bench/results/shipped/guard_fit.json"))
    ap.add_argument(
        "--copies", type=int, default=AUGMENTED_COPIES, help="augmented draws per training image"
    )
    ap.add_argument("--dry-run", action="store_true", help="fit and report, do not write")
    ap.add_argument("--save-features", type=Path, default=None, help="also write them (.npz)")
    ap.add_argument(
        "--from-features", type=Path, default=None,
        help="fit from features an earlier --save-features run wrote (same model, same split)",
    )  # fmt: skip
    ap.add_argument(
        "--check-n", type=int, default=None,
        help="validation images rerun after writing to check the logits (default: all)",
    )  # fmt: skip
    return ap.parse_args(argv)


class Features(NamedTuple):
    """Guard features per depth, labels, and the validation logits (to check them later)."""

    train: list[torch.Tensor]
    train_labels: torch.Tensor
    val: list[torch.Tensor]
    val_labels: torch.Tensor
    val_logits: torch.Tensor


def compute_features(
    loaded: InferenceModel, meta: dict, train: list, val: list, copies: int
) -> Features:
    """Features of the training part (and `copies` augmented draws of it) and validation part."""

    def feats(samples: list, desc: str, n_copies: int = 0) -> tuple:
        images, labels = cache_samples(samples, loaded.image_size, desc)
        if n_copies:
            augment = recipe_from_dict(meta["recipe"]).augment
            images = torch.cat([images, augmented_planes(images, augment, n_copies)])
            labels = labels.repeat(n_copies + 1)
        f, logits = guard_features(loaded.model, images, loaded.intensity, loaded.channels_last)
        return f, logits, labels

    f_tr, _, y_tr = feats(train, "train", copies)
    f_va, logit_va, y_va = feats(val, "val")
    return Features(f_tr, y_tr, f_va, y_va, logit_va)


def load_features(path: Path, n_train: int, n_val: int) -> Features:
    """Features an earlier `--save-features` run wrote, checked against this model's split."""
    saved = np.load(path)
    if len(saved["train_labels"]) != n_train or len(saved["val_labels"]) != n_val:
        raise SystemExit(f"{path} does not hold this model's split")
    n_depths = sum(k.startswith("train_depth") for k in saved.files)
    return Features(
        [torch.from_numpy(saved[f"train_depth{j}"]) for j in range(n_depths)],
        torch.from_numpy(saved["train_labels"]),
        [torch.from_numpy(saved[f"val_depth{j}"]) for j in range(n_depths)],
        torch.from_numpy(saved["val_labels"]),
        torch.from_numpy(saved["val_logits"]),
    )


def save_features(path: Path, f: Features) -> None:
    arrays = {f"train_depth{j}": t.numpy() for j, t in enumerate(f.train)}
    arrays |= {f"val_depth{j}": t.numpy() for j, t in enumerate(f.val)}
    np.savez_compressed(
        path, train_labels=f.train_labels.numpy(), val_labels=f.val_labels.numpy(),
        val_logits=f.val_logits.numpy(), **arrays,
    )  # fmt: skip


def guard_metadata(
    scorer: OODScore, s_va: np.ndarray, threshold: float, split: dict, n_train: int,
    args: argparse.Namespace,
) -> dict:  # fmt: skip
    """The `guard` metadata stored in the model file beside its tensors."""
    n_val = len(s_va)
    return {
        "ood_threshold": threshold,
        "score": "largest over depths of the Mahalanobis distance to the nearest class mean "
        f"(shared Ledoit-Wolf covariance) divided by its validation {SCALE_QUANTILE:.0%} quantile",
        "features": "average-pooled outputs of the backbone's last 3 blocks and last conv stage "
        "(ensemble members concatenated)",
        "feature_widths": scorer.widths,
        "fitted_on": f"Training minus validation (split_seed {split['split_seed']}, "
        f"val_fraction {split['val_fraction']}): {n_train} images and {args.copies} "
        "augmented draws of each (the recipe's training augmentation)",
        "threshold_on": f"validation split, {n_val} images, {args.accept:.2%} accepted",
        "val_accept_rate": round(float((s_va <= threshold).mean()), 5),
        "reference_median": float(np.median(s_va)),  # infer/site_check.py
        "reference_on": f"validation split, {n_val} images",
        "fitted": time.strftime("%Y-%m-%d"),
    }


def write_and_check(
    path: Path, tensors: dict, guard_meta: dict, val: list, val_logits: torch.Tensor,
    n: int | None,
) -> dict:  # fmt: skip
    """Write the guard into the model file; check its weights and validation logits unchanged
    (the first `n` validation images, or all). Returns the check's figures for the report."""
    before = weights_digest(path)
    add_extra_tensors(path, tensors, {"guard": guard_meta})
    after = weights_digest(path)
    again = load_for_inference(path, "cpu")
    check = val[:n] if n else val
    images, _ = cache_samples(check, again.image_size, "val again")
    _, logit_again = guard_features(again.model, images, again.intensity, again.channels_last)
    out = {
        "weights_sha256_before": before,
        "weights_sha256_after": after,
        "val_logits_checked": len(check),
        "val_logits_max_abs_diff": float((logit_again - val_logits[: len(check)]).abs().max()),
    }
    if before != after or out["val_logits_max_abs_diff"] != 0.0:
        raise SystemExit(f"model changed while adding guard statistics: {out}")
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    path = args.model or shipped_model_path()
    t0 = time.time()
    loaded = load_for_inference(path, "cpu")
    meta = read_metadata(path)
    data_dir = resolve_data_dir(args.data)
    train, val, split = model_split(data_dir, meta)
    if args.from_features is not None:
        f = load_features(args.from_features, len(train), len(val))
    else:
        f = compute_features(loaded, meta, train, val, args.copies)
    if args.save_features is not None:
        save_features(args.save_features, f)
    tensors, scorer = fit_depths(f.train, f.train_labels, f.val, len(loaded.class_names))
    with torch.inference_mode():
        s_tr = scorer(f.train).numpy()
        s_va = scorer(f.val).numpy()
    threshold = threshold_for(s_va, args.accept)
    guard_meta = guard_metadata(scorer, s_va, threshold, split, len(train), args)
    report = {
        **report_head("guard_fit", __file__, argv, loaded.device),
        "model": str(path),
        "data": str(data_dir),
        "split": split | {"train": len(train), "val": len(val)},
        "guard": guard_meta,
        "shrinkage": [
            float(tensors[depth_key(j, "shrinkage")][0]) for j in range(len(scorer.widths))
        ],
        "scales": [round(float(v), 4) for v in scorer.scales],
        "train_scores": _pct(s_tr),
        "val_scores": _pct(s_va),
    }
    if not args.dry_run:
        report |= write_and_check(path, tensors, guard_meta, val, f.val_logits, args.check_n)
    report["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("guard", "train_scores", "val_scores")}, indent=2))
    print(f"wrote {args.out}" + ("" if args.dry_run else f" and guard statistics into {path}"))
    return report


def _pct(scores: np.ndarray) -> dict[str, float]:
    q = np.percentile(scores, [0, 1, 5, 50, 95, 99, 99.5, 100])
    names = ("min", "p1", "p5", "median", "p95", "p99", "p99.5", "max")
    return {n: round(float(v), 3) for n, v in zip(names, q, strict=True)}


if __name__ == "__main__":
    main()
