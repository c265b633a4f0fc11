"""The ceiling: what a model trained on external-dev itself reaches (grouped cross-validation).

Labels in external-dev are per case, and a slice of a tumour case may not show the tumour, so
100 % is out of reach; this measures how far a model trained on this very collection gets.
Slices of one scan are kept on one side of every split: two images are linked when their 24x24
thumbnails correlate above 0.97 (brainmri.data.dedupe), and the connected components are the
groups of a 5-fold StratifiedGroupKFold.

Two learners, both from ImageNet EfficientNet-Lite0 (offline weights), images whole (no crop):
- ``linear``: frozen backbone, pooled (avg || max) features at --size px, standardized, then a
  logistic regression whose C is chosen by an inner grouped 3-fold CV on each training fold;
- ``finetune`` (with --finetune EPOCHS): the classifier of the package (3 outputs) fine-tuned
  whole at --size px for EPOCHS epochs on each training fold, with the `cpu` recipe's
  augmentation.

With --transfer N, for comparison: the same frozen features with a logistic regression trained
on N benchmark Training images (seed-42 validation files excluded, 4 classes) and applied to
all of external-dev -- how far generic ImageNet features carry across collections when the
classifier on top learns from the benchmark.

Out-of-fold predictions are broken down as in bench/external.py (per class, sequence, tumour).
Measurement only: nothing here is, or may become, a shipped model.

With --features-of MODEL the linear learner reads that model file's pooled features instead
(its own size and preprocessing; written to OUT/ceiling_features_of_model.json): what a
classifier trained on the collection reaches on features a model learnt elsewhere.

    python bench/ceiling.py [--size 160] [--finetune 0] [--features-of M] \
        [--out bench/results/external]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external import (  # noqa: E402
    DEFAULT_DATA,
    DEFAULT_OUT,
    breakdown,
    decode_external,
    format_breakdown,
    plot_risk_coverage,
    provenance,
    scan_external,
    write_json,
)

from brainmri.config import AugmentConfig, ModelConfig, load_recipe  # noqa: E402
from brainmri.data.dedupe import UnionFind, compute_features, near_pairs, stack_vectors  # noqa: E402
from brainmri.data.transforms import BatchAugment, to_model_input  # noqa: E402
from brainmri.train.probe_head import logistic_pipeline  # noqa: E402

CLASSES = ["glioma", "meningioma", "notumor"]
GROUP_THRESHOLD = 0.97


def scan_groups(paths: list[Path], threshold: float = GROUP_THRESHOLD) -> np.ndarray:
    """Group id per image: connected components of thumbnail correlation > threshold."""
    feats = compute_features(paths, workers=2)
    uf = UnionFind(len(paths))
    for i, j, _ in near_pairs(stack_vectors(f.vector for f in feats), threshold=threshold):
        uf.union(i, j)
    return np.array([uf.find(i) for i in range(len(paths))])


def folds(labels: np.ndarray, groups: np.ndarray, k: int = 5, seed: int = 0):
    from sklearn.model_selection import StratifiedGroupKFold

    return list(
        StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(labels, labels, groups)
    )


@torch.inference_mode()
def imagenet_features(images: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Pooled (avg || max) frozen ImageNet lite0 features of uint8 (N, 1, S, S) images."""
    from brainmri.model.classifier import TumorClassifier

    model = TumorClassifier(ModelConfig(), num_classes=len(CLASSES)).eval()
    out = [
        model.features(to_model_input(images[i : i + batch], channels_last=True))
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out).numpy()


@torch.inference_mode()
def model_features(path: Path, samples, batch: int = 64) -> np.ndarray:
    """Pooled backbone features (avg || max) of a model file, with its own preprocessing."""
    from brainmri.data.transforms import normalize_planes
    from brainmri.infer.core import load_for_inference

    loaded = load_for_inference(path, "cpu")
    x = decode_external(samples, loaded.image_size)
    out = []
    for i in range(0, len(x), batch):
        planes = normalize_planes(x[i : i + batch], loaded.intensity)
        out.append(loaded.model.features(to_model_input(planes, loaded.channels_last)))
    return torch.cat(out).numpy()


def linear_probe(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, splits
) -> tuple[np.ndarray, list]:
    """Out-of-fold probabilities of a standardized logistic regression (C by inner grouped CV)."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score

    probs = np.zeros((len(y), len(CLASSES)))
    chosen = []
    for tr, te in splits:
        inner = StratifiedGroupKFold(3, shuffle=True, random_state=1)
        best_c, best = None, -1.0
        for c in (0.001, 0.01, 0.1):
            pipe = logistic_pipeline(c)
            s = cross_val_score(pipe, x[tr], y[tr], groups=groups[tr], cv=inner).mean()
            if s > best:
                best_c, best = c, s
        pipe = logistic_pipeline(best_c)
        probs[te] = pipe.fit(x[tr], y[tr]).predict_proba(x[te])
        chosen.append(best_c)
    return probs, chosen


def finetune_fold(images, y, tr, te, epochs: int, seed: int) -> np.ndarray:
    """Fine-tune ImageNet lite0 (3 classes) on images[tr]; probabilities of images[te]."""
    from brainmri.model.classifier import TumorClassifier

    torch.manual_seed(seed)
    recipe = load_recipe("cpu")
    model = TumorClassifier(recipe.model, num_classes=len(CLASSES)).to(
        memory_format=torch.channels_last
    )
    aug = BatchAugment(AugmentConfig(**recipe.augment.model_dump()))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
    steps = epochs * math.ceil(len(tr) / 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 5e-4, total_steps=steps, pct_start=0.15)
    yt = torch.as_tensor(y)
    model.train()
    for _ in range(epochs):
        order = torch.as_tensor(tr)[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(order), 32):
            idx = order[i : i + 32]
            x = to_model_input(aug(images[idx], gen), channels_last=True)
            loss = F.cross_entropy(model(x), yt[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.inference_mode():
        x = to_model_input(images[torch.as_tensor(te)], channels_last=True)
        return torch.softmax(model(x), dim=1).numpy()


def report(name: str, probs: np.ndarray, y: np.ndarray, samples, splits, extra: dict) -> dict:
    res = breakdown(probs, y, samples, CLASSES)
    res["fold_accuracy"] = [float((probs[te].argmax(1) == y[te]).mean()) for _, te in splits]
    res.update(extra)
    print(format_breakdown(res, f"ceiling, {name}"), flush=True)
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--finetune", type=int, default=0, help="epochs per fold (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--transfer", type=int, default=0, help="benchmark images for the transfer probe"
    )
    p.add_argument("--skip-cv", action="store_true", help="only the transfer probe")
    p.add_argument(
        "--fold", type=int, default=None, help="only fine-tune this fold (parallel runs)"
    )
    p.add_argument("--merge", action="store_true", help="combine OUT/ceiling_ft_fold*.json")
    p.add_argument("--threads", type=int, default=1, help="torch threads of one --fold run")
    p.add_argument(
        "--features-of", type=Path, default=None, metavar="MODEL",
        help="linear learner on this model file's pooled features (no fine-tune)",
    )  # fmt: skip
    args = p.parse_args(argv)
    if args.features_of is not None:
        return features_of_model(args)
    if args.skip_cv:
        return transfer_only(args)
    if args.fold is not None:
        return finetune_one_fold(args)
    if args.merge:
        return merge_folds(args)
    torch.set_num_threads(2)
    samples = scan_external(args.data)
    y = np.array([s.label for s in samples])
    t0 = time.perf_counter()
    groups = scan_groups([s.path for s in samples])
    splits = folds(y, groups, 5, args.seed)
    images = decode_external(samples, args.size)
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1])
    out: dict = {
        "groups": {
            "n": int(len(sizes)),
            "largest": int(sizes.max()),
            "singletons": int((sizes == 1).sum()),
        },
        "fold_sizes": [int(len(te)) for _, te in splits],
        "size": args.size,
    }
    print(f"{out['groups']} groups; folds {out['fold_sizes']}", flush=True)
    t1 = time.perf_counter()
    feats = imagenet_features(images)
    probs, chosen = linear_probe(feats, y, groups, splits)
    t2 = time.perf_counter()
    out["linear"] = report(
        "frozen lite0 + logistic regression",
        probs,
        y,
        samples,
        splits,
        {"C": chosen, "seconds": round(t2 - t1, 1)},
    )
    curves = {"linear probe (grouped 5-fold)": out["linear"]["risk_coverage"]}
    if args.finetune:
        probs = np.zeros((len(y), len(CLASSES)))
        for k, (tr, te) in enumerate(splits):
            probs[te] = finetune_fold(images, y, tr, te, args.finetune, args.seed + k)
            print(f"fold {k}: {(probs[te].argmax(1) == y[te]).mean():.3f}", flush=True)
        t3 = time.perf_counter()
        out["finetune"] = report(
            f"lite0 fine-tuned {args.finetune} epochs",
            probs,
            y,
            samples,
            splits,
            {"epochs": args.finetune, "seconds": round(t3 - t2, 1)},
        )
        curves[f"fine-tune {args.finetune} ep (grouped 5-fold)"] = out["finetune"]["risk_coverage"]
    out["seconds_total"] = round(time.perf_counter() - t0, 1)
    out["provenance"] = provenance()
    write_json(args.out / "ceiling.json", out)
    plot_risk_coverage(curves, args.out / "ceiling_risk_coverage.png", "external-dev ceiling")
    return out


def finetune_one_fold(args) -> dict:
    """Fine-tune one fold (--finetune epochs); write its out-of-fold probabilities."""
    torch.set_num_threads(args.threads)
    samples = scan_external(args.data)
    y = np.array([s.label for s in samples])
    splits = folds(y, scan_groups([s.path for s in samples]), 5, args.seed)
    images = decode_external(samples, args.size)
    tr, te = splits[args.fold]
    t0 = time.perf_counter()
    probs = finetune_fold(images, y, tr, te, args.finetune, args.seed + args.fold)
    res = {
        "fold": args.fold,
        "test_index": te.tolist(),
        "probs": probs.tolist(),
        "epochs": args.finetune,
        "size": args.size,
        "seconds": round(time.perf_counter() - t0, 1),
        "provenance": provenance(),
    }
    print(f"fold {args.fold}: {(probs.argmax(1) == y[te]).mean():.3f}", flush=True)
    write_json(args.out / f"ceiling_ft_fold{args.fold}.json", res)
    return res


def merge_folds(args) -> dict:
    """Out-of-fold breakdown of the fine-tuned ceiling from the per-fold files."""
    import json

    samples = scan_external(args.data)
    y = np.array([s.label for s in samples])
    parts = [json.loads((args.out / f"ceiling_ft_fold{k}.json").read_text()) for k in range(5)]
    probs = np.zeros((len(y), len(CLASSES)))
    splits = []
    for part in parts:
        te = np.array(part["test_index"])
        probs[te] = np.array(part["probs"])
        splits.append((None, te))
    res = report(
        f"lite0 fine-tuned {parts[0]['epochs']} epochs",
        probs,
        y,
        samples,
        splits,
        {
            "epochs": parts[0]["epochs"],
            "fold_seconds": [q["seconds"] for q in parts],
            "provenance": provenance(),
        },
    )
    write_json(args.out / "ceiling_finetune.json", res)
    return res


def features_of_model(args) -> dict:
    """The grouped 5-fold linear ceiling on a model file's features (module doc)."""
    torch.set_num_threads(2)
    samples = scan_external(args.data)
    y = np.array([s.label for s in samples])
    groups = scan_groups([s.path for s in samples])
    splits = folds(y, groups, 5, args.seed)
    t0 = time.perf_counter()
    probs, chosen = linear_probe(model_features(args.features_of, samples), y, groups, splits)
    extra = {"C": chosen, "seconds": round(time.perf_counter() - t0, 1)}
    out = {
        "features_of": str(args.features_of),
        "fold_sizes": [int(len(te)) for _, te in splits],
        "linear": report(
            f"{args.features_of.name} features + logistic regression",
            probs,
            y,
            samples,
            splits,
            extra,
        ),  # fmt: skip
        "provenance": provenance(),
    }
    write_json(args.out / "ceiling_features_of_model.json", out)
    return out


def transfer_probe(ext_feats: np.ndarray, n: int, size: int, seed: int) -> np.ndarray:
    """4-class probabilities on external-dev of an LR trained on benchmark features."""

    from brainmri.data.cache import decode_images
    from brainmri.data.folders import scan_split, stratified_split

    bench = DEFAULT_DATA.parent / "brain-tumor-mri"
    train, _ = stratified_split(scan_split(bench, "Training"), 0.15, 42)
    pick = np.random.default_rng(seed).choice(len(train), size=min(n, len(train)), replace=False)
    chosen = [train[i] for i in pick]
    x = imagenet_features(decode_images([s.path for s in chosen], size, desc="benchmark"))
    y = np.array([s.label for s in chosen])
    pipe = logistic_pipeline(0.01)
    return pipe.fit(x, y).predict_proba(ext_feats)


def transfer_only(args) -> dict:
    from brainmri import CLASS_NAMES

    torch.set_num_threads(2)
    samples = scan_external(args.data)
    y = np.array([s.label for s in samples])
    t0 = time.perf_counter()
    feats = imagenet_features(decode_external(samples, args.size))
    probs = transfer_probe(feats, args.transfer, args.size, args.seed)
    res = breakdown(probs, y, samples, list(CLASS_NAMES))
    res.update(
        {
            "train_images": args.transfer,
            "C": 0.01,
            "size": args.size,
            "seconds": round(time.perf_counter() - t0, 1),
            "provenance": provenance(),
        }
    )
    print(format_breakdown(res, "transfer probe (benchmark-trained LR on frozen ImageNet lite0)"))
    write_json(args.out / "transfer_probe.json", res)
    return res


if __name__ == "__main__":
    main()
