"""Training and inference throughput (images/s) of a recipe's model on this machine.

Times the real training step of train/loop.py's inner loop (batched augmentation on a uint8
cache -> intensity -> model input -> forward -> loss -> backward -> AdamW step) for each stage's
trainable fraction, and inference (eval mode, inference_mode), with and without channels_last.
Random pixel content: speed does not depend on it.

    python bench/throughput.py --config cpu --sizes 192 224 --steps 12 \
        --out bench/results/throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from brainmri.config import load_recipe
from brainmri.data.transforms import BatchAugment, normalize_intensity, to_model_input
from brainmri.infer.core import predict_logits
from brainmri.model.classifier import TumorClassifier
from brainmri.train.loop import weighted_smoothed_ce


def time_train(
    recipe, size: int, fraction: float, channels_last: bool, steps: int, batch: int
) -> float:
    model = TumorClassifier(recipe.model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.set_trainable_fraction(fraction)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    aug = BatchAugment(recipe.augment)
    cache = torch.randint(0, 256, (batch * 4, 1, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 4, (batch * 4,))
    gen = torch.Generator().manual_seed(0)

    def step(i: int) -> None:
        idx = torch.arange(batch) + (i % 4) * batch
        x = aug(cache[idx], generator=gen)
        x = to_model_input(normalize_intensity(x, recipe.data.intensity), channels_last)
        loss = weighted_smoothed_ce(model(x), labels[idx], None, 0.1) + model.l2_penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(2):  # warm-up
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps * batch / (time.perf_counter() - t0)


def time_infer(recipe, size: int, channels_last: bool, n: int, batch: int) -> float:
    model = TumorClassifier(recipe.model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cache = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8)
    predict_logits(model, cache[:batch], batch, "cpu", channels_last)  # warm-up
    t0 = time.perf_counter()
    predict_logits(model, cache, batch, "cpu", channels_last, intensity=recipe.data.intensity)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--sizes", type=int, nargs="+", default=[192, 224])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--infer-images", type=int, default=256)
    ap.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    ap.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="recipe override, e.g. model.weights=none (speed needs no weights)",
    )
    ap.add_argument("--no-nchw", action="store_true", help="only time channels_last")
    args = ap.parse_args()
    recipe = load_recipe(args.config, args.overrides)
    batch = recipe.train.batch_size
    rows = []
    for size in args.sizes:
        for cl in (True,) if args.no_nchw else (True, False):
            for stage in recipe.train.stages:
                ips = time_train(recipe, size, stage.trainable_fraction, cl, args.steps, batch)
                rows.append(
                    {
                        "kind": "train",
                        "size": size,
                        "channels_last": cl,
                        "stage": stage.name,
                        "fraction": stage.trainable_fraction,
                        "images_per_s": round(ips, 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
            ips = time_infer(recipe, size, cl, args.infer_images, recipe.evaluate.batch_size)
            rows.append(
                {
                    "kind": "inference",
                    "size": size,
                    "channels_last": cl,
                    "images_per_s": round(ips, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    out = {
        "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "batch_size": batch,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
