"""Compare OOD scores for the input guard on the validation split and the development OOD set.

Candidates, each a Mahalanobis distance to the nearest class mean under a shared Ledoit-Wolf
covariance fitted on the model's training split (docs/RESULTS.md §16 has the rules that pick):
- P  penultimate features (Dense+SiLU output, 256): the guard as shipped before §16;
- H  the head's input: dual-pooled (avg ‖ max) last conv stage, 2 × 1280;
- M  several depths: average-pooled outputs of backbone stages 2-6 and the last conv stage, one
     distance per depth divided by that depth's validation 99th percentile, the largest counts;
- M4 the same from stage 4 on (stages 4-6 and the last conv stage);
- and each again with suffix "a": fitted on the training images plus `--copies` draws of the
  recipe's own training augmentation of each (blur, low resolution, contrast, gamma, geometry).
Each threshold is the validation quantile that accepts `--accept` of the images the image-
statistics rules let through. Reported: validation acceptance of the whole guard, acceptance of
the validation images' perturbed copies (bench/robustness.py's perturbations, as guard_eval
applies them to the test split) and which development OOD items (bench/ood_dev.py) each
candidate refuses. The reported OOD set (bench/ood_set.py) and the test split are not read here.

    python bench/guard_score_compare.py [--model M] [--accept 0.99,0.995] [--copies 2] \
        [--out bench/results/guard_compare/compare.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from ood_dev import dev_items
from robustness import PERTURBATIONS, model_data_args, report_head, write_report

from brainmri.config import recipe_from_dict
from brainmri.data.cache import cache_samples
from brainmri.data.folders import resolve_data_dir
from brainmri.data.images import resize_square
from brainmri.data.quality import check_image_bytes
from brainmri.data.transforms import normalize_planes, to_model_input
from brainmri.errors import BrainMRIError, RejectedInput
from brainmri.infer.core import load_for_inference
from brainmri.infer.guard import augmented_planes, fit_statistics, threshold_for
from brainmri.infer.inputs import auto_crop, check_scan_statistics, load_plane
from brainmri.model.checkpoint import read_metadata, shipped_model_path
from brainmri.train.data import model_split

STAGES = (2, 3, 4, 5, 6)


@torch.inference_mode()
def all_features(loaded, planes: torch.Tensor, batch: int = 64) -> dict[str, np.ndarray]:
    """uint8 planes (N, 1, S, S) -> {feature name: (N, width)} for every candidate."""
    model = loaded.model
    backbone = model.backbone
    grabbed: dict[str, torch.Tensor] = {}
    hooks = [
        backbone.blocks[i].register_forward_hook(
            lambda _m, _i, out, k=f"stage{i}": grabbed.__setitem__(k, out)
        )
        for i in STAGES
    ]
    hooks.append(
        backbone.bn2.register_forward_hook(lambda _m, _i, out: grabbed.__setitem__("last", out))
    )
    out: dict[str, list[np.ndarray]] = {}
    try:
        for s in range(0, len(planes), batch):
            x = to_model_input(
                normalize_planes(planes[s : s + batch], loaded.intensity), loaded.channels_last
            )
            pooled = model.features(x)
            feats = {"P": model.head[:4](pooled), "H": pooled}
            for k, v in grabbed.items():
                feats[k] = v.float().mean(dim=(2, 3))
            for k, v in feats.items():
                out.setdefault(k, []).append(v.float().numpy())
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in out.items()}


def mahalanobis(stats: dict[str, torch.Tensor], f: np.ndarray) -> np.ndarray:
    means = stats["guard.class_means"].double().numpy()
    prec = stats["guard.precision"].double().numpy()
    d = f.astype(np.float64)[:, None, :] - means[None]  # (N, C, F)
    sq = ((d @ prec) * d).sum(axis=-1)  # BLAS, not einsum's loop
    return np.sqrt(np.maximum(sq.min(axis=1), 0.0))


def dev_planes(size: int) -> tuple[list[dict], torch.Tensor]:
    """Development OOD items through the user's path up to the model input."""
    recs, ready = [], []
    for item in dev_items():
        rec = {"kind": item.kind, "name": item.name}
        try:
            plane, _ = auto_crop(load_plane(item.data, item.file_name), "auto")
            ready.append(resize_square(np.ascontiguousarray(plane), size))
            rec["rule"] = None
        except (RejectedInput, BrainMRIError) as exc:
            rec["rule"] = str(exc)
        recs.append(rec)
    return recs, torch.from_numpy(np.stack(ready)[:, None])


def _passes_statistics(plane: np.ndarray) -> bool:
    try:
        check_scan_statistics(plane)
    except RejectedInput:
        return False
    return True


def val_rule_rejections(val: list) -> list[str]:
    """Validation files the image-statistics rules (load_plane) refuse."""
    out = []
    for s in val:
        try:
            load_plane(s.path.read_bytes(), s.path.name)
        except (RejectedInput, BrainMRIError):
            out.append(s.path.name)
    return out


def perturbed_val(val: list, size: int) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """Every perturbation of bench/robustness.py applied to the decoded validation planes (as
    guard_eval does for the test split): resized copies, and which pass the statistics rules."""
    originals = [check_image_bytes(s.path.read_bytes()) for s in val]
    planes, passes = {}, {}
    for p in PERTURBATIONS:
        if p.name == "clean":
            continue
        copies = [p.fn(g, i) for i, g in enumerate(originals)]
        passes[p.name] = np.array([_passes_statistics(c) for c in copies])
        planes[p.name] = torch.from_numpy(
            np.stack([resize_square(np.ascontiguousarray(c), size) for c in copies])[:, None]
        )
    return planes, passes


def candidate_scores(
    loaded, train, val, dev_x, pert_x: dict[str, torch.Tensor], recipe: dict, copies: int
) -> dict[str, dict[str, np.ndarray]]:
    """{candidate: {"val" | "dev" | "pert:<name>": scores}} (module doc; "a": fitted on the
    training images plus `copies` augmented draws of each)."""
    size = loaded.image_size
    tr_x, y_tr = cache_samples(train, size, "train")
    va_x, _ = cache_samples(val, size, "val")
    parts = {"val": va_x, "dev": dev_x} | {f"pert:{k}": v for k, v in pert_x.items()}
    feats = {k: all_features(loaded, x) for k, x in parts.items()}
    f_tr = all_features(loaded, tr_x)
    aug_x = augmented_planes(tr_x, recipe_from_dict(recipe).augment, copies) if copies else None
    f_aug = all_features(loaded, aug_x) if aug_x is not None else None
    y_aug = y_tr.repeat(copies).numpy()
    n_classes = len(loaded.class_names)
    depth = [f"stage{i}" for i in STAGES] + ["last"]
    out: dict[str, dict[str, np.ndarray]] = {}
    for fit_name, extra in (("", None), ("a", f_aug)):
        if fit_name and extra is None:
            continue
        raw = {}
        for k in f_tr:
            x = f_tr[k] if extra is None else np.concatenate([f_tr[k], extra[k]])
            y = y_tr.numpy() if extra is None else np.concatenate([y_tr.numpy(), y_aug])
            stats = fit_statistics(x, y, n_classes)
            raw[k] = {part: mahalanobis(stats, f[k]) for part, f in feats.items()}
        scale = {k: np.quantile(raw[k]["val"], 0.99) for k in depth}
        for name, used in (("M", depth), ("M4", depth[2:])):
            out[name + fit_name] = {
                part: np.max([raw[k][part] / scale[k] for k in used], axis=0) for part in feats
            }
        out["P" + fit_name], out["H" + fit_name] = raw["P"], raw["H"]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument("--accept", default="0.99,0.995", help="validation shares accepted")
    ap.add_argument("--copies", type=int, default=2, help="augmented draws per training image")
    ap.add_argument("--out", type=Path, default=Path("bench/results/guard_compare/compare.json"))
    args = ap.parse_args(argv)
    path = args.model or shipped_model_path()
    t0 = time.time()
    loaded = load_for_inference(path, "cpu")
    train, val, split = model_split(resolve_data_dir(args.data), read_metadata(path))
    refused_val = set(val_rule_rejections(val))
    kept = [s for s in val if s.path.name not in refused_val]
    recs, dev_x = dev_planes(loaded.image_size)
    pert_x, passes = perturbed_val(kept, loaded.image_size)
    recipe = read_metadata(path)["recipe"]
    scores = candidate_scores(loaded, train, kept, dev_x, pert_x, recipe, args.copies)
    reaching = [r for r in recs if r["rule"] is None]
    result: dict = {}
    for name, sc in scores.items():
        for accept in (float(a) for a in args.accept.split(",")):
            t = threshold_for(sc["val"], accept)
            refused = [r["name"] for r, s in zip(reaching, sc["dev"], strict=True) if s > t]
            pert = {k: float(((sc[f"pert:{k}"] <= t) & ok).mean()) for k, ok in passes.items()}
            result[f"{name}@{accept}"] = {
                "threshold": round(float(t), 4),
                "val_accept_score": round(float((sc["val"] <= t).mean()), 5),
                "val_accept_guard": round(float((sc["val"] <= t).sum()) / len(val), 5),
                "val_perturbed_accept": round(float(np.mean(list(pert.values()))), 5),
                "val_perturbed_accept_by_kind": {k: round(v, 4) for k, v in pert.items()},
                "dev_refused": len(refused) + len(recs) - len(reaching),
                "dev_accepted": [r["name"] for r in reaching if r["name"] not in refused],
                "dev_scores": {
                    r["name"]: round(float(s / t), 3)
                    for r, s in zip(reaching, sc["dev"], strict=True)
                },
            }
    report = {
        **report_head("guard_score_compare", __file__, argv, loaded.device),
        "model": str(path),
        "split": split | {"train": len(train), "val": len(val)},
        "val_refused_by_rules": sorted(refused_val),
        "dev_items": len(recs),
        "dev_refused_by_rules": {r["name"]: r["rule"] for r in recs if r["rule"]},
        "candidates": result,
        "seconds": round(time.time() - t0, 1),
    }
    write_report(args.out, report)
    for k, v in result.items():
        worst = min(v["val_perturbed_accept_by_kind"].values())
        print(
            f"{k:10s} t={v['threshold']:8.3f} val {v['val_accept_guard']:.4f} perturbed val "
            f"{v['val_perturbed_accept']:.4f} (worst {worst:.4f}) dev refused "
            f"{v['dev_refused']}/{len(recs)} accepted {v['dev_accepted']}"
        )
    return report


if __name__ == "__main__":
    main()
