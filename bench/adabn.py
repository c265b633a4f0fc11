"""Unlabelled site adaptation check: BatchNorm statistics re-estimated on a site's images (AdaBN).

Protocol (docs/RESULTS.md §20): external-dev's scan groups (bench/ceiling.py `scan_groups`) are
split in two seeded halves; the model's BatchNorm running statistics are re-estimated on the
images of one half (labels unused, no gradient, every BatchNorm or the backbone's only) and the
model answers the other half; then the halves swap, so that every image is answered by a model
whose statistics never saw it. Compared with the unchanged model on the same 943 paired answers
(McNemar) and measured on the model's own benchmark validation files (never trained on).

    python bench/adabn.py [--model M] [--out bench/results/external/adabn.json]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt_curve import BENCH, SHIPPED  # noqa: E402
from ceiling import scan_groups  # noqa: E402
from external import (  # noqa: E402
    DEFAULT_DATA,
    ROOT,
    breakdown,
    decode_external,
    format_breakdown,
    mcnemar_p,
    pct,
    provenance,
    scan_external,
    write_json,
)

from brainmri.data.cache import cache_samples  # noqa: E402
from brainmri.data.transforms import normalize_planes, to_model_input  # noqa: E402
from brainmri.infer.core import InferenceModel  # noqa: E402
from brainmri.model.checkpoint import load_model  # noqa: E402
from brainmri.train.data import model_split  # noqa: E402

LAYERS = ("all", "backbone")


@torch.no_grad()
def restat(loaded: InferenceModel, x: torch.Tensor, layers: str, batch: int = 32) -> nn.Module:
    """A copy of the model whose BatchNorm running statistics are the plain averages over the
    uint8 images x (momentum None); every other weight as it was."""
    model = copy.deepcopy(loaded.model).eval()
    norms = [
        m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and (layers == "all" or ".backbone." in f".{name}.")
    ]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for i in range(0, len(x), batch):
        planes = normalize_planes(x[i : i + batch], loaded.intensity)
        model(to_model_input(planes, loaded.channels_last))
    return model.eval()


def accuracy(loaded: InferenceModel, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((loaded.probs(x).argmax(1) == y).float().mean())


def halves(groups: np.ndarray, seed: int) -> np.ndarray:
    """0/1 per image: its scan group's half of a seeded permutation of the groups."""
    ids = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(ids))
    half = {int(g): int(i >= len(ids) // 2) for i, g in zip(order, ids, strict=True)}
    return np.array([half[int(g)] for g in groups])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=SHIPPED)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group-threshold", type=float, default=0.97)
    p.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "external" / "adabn.json"
    )
    args = p.parse_args(argv)
    model, meta = load_model(args.model, "cpu")
    source = InferenceModel(model, meta, torch.device("cpu"))
    samples = scan_external(args.data)
    labels = np.array([s.label for s in samples])
    x = decode_external(samples, source.image_size)
    half = halves(scan_groups([s.path for s in samples], args.group_threshold), args.seed)
    _, val, _ = model_split(BENCH, meta)
    x_val, y_val = cache_samples(val, source.image_size, desc="benchmark val")
    base = source.probs(x).numpy()
    report = {"model": str(args.model), "halves": [int((half == h).sum()) for h in (0, 1)]}
    report["source"] = breakdown(base, labels, samples, source.class_names)
    report["source"]["benchmark_val"] = float(
        (source.probs(x_val).argmax(1) == y_val).float().mean()
    )
    print(format_breakdown(report["source"], "unchanged model"))
    for layers in LAYERS:
        probs, val_acc = np.zeros_like(base), []
        for fit_half in (0, 1):
            fitted = restat(source, x[torch.from_numpy(half == fit_half)], layers)
            adapted = InferenceModel(fitted, meta, torch.device("cpu"))
            answer = half != fit_half
            probs[answer] = adapted.probs(x[torch.from_numpy(answer)]).numpy()
            val_acc.append(accuracy(adapted, x_val, y_val))
        res = breakdown(probs, labels, samples, source.class_names)
        right = probs.argmax(1) == labels
        res |= {
            "benchmark_val_per_fold": val_acc,
            "mcnemar_p_vs_source": mcnemar_p(base.argmax(1) == labels, right),
            "right": right.astype(int).tolist(),
        }
        report[f"adabn_{layers}"] = res
        print(format_breakdown(res, f"AdaBN ({layers} BatchNorm), statistics from the other half"))
        before = pct(report["source"]["benchmark_val"])
        print(
            f"  McNemar p vs unchanged {res['mcnemar_p_vs_source']:.2g}; benchmark val "
            f"{' / '.join(pct(v) for v in val_acc)} % (unchanged {before} %)"
        )
    write_json(args.out, report | {"provenance": provenance()})
    return report


if __name__ == "__main__":
    main()
