"""Before/after of the CPU speed levers that are not the model itself.

    python bench/speed_levers.py [--data ../shared/data/brain-tumor-mri] [--size 192]

1. Decoded-image cache: decoding + resizing a JPEG each time it is used (what a plain
   Dataset/DataLoader does every epoch) vs indexing a batch from the in-memory uint8 cache.
2. Batched augmentation: torchvision.transforms.v2 applied image by image (per-image random
   parameters need a Python loop) vs BatchAugment on the whole batch (one grid_sample).
3. Threads: one full fine-tuning step with 1 vs all intra-op threads.
Channels_last vs NCHW is in bench/throughput.py. Writes bench/results/speed_levers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from brainmri.config import load_recipe
from brainmri.data.folders import resolve_data_dir, scan_split
from brainmri.data.images import load_gray, resize_square
from brainmri.data.transforms import BatchAugment, to_model_input
from brainmri.model.classifier import TumorClassifier
from brainmri.train.loop import weighted_smoothed_ce


def timed(fn, repeat: int = 3) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("bench/results/speed_levers.json"))
    args = ap.parse_args()
    recipe = load_recipe("cpu")
    b, s = args.batch, args.size
    files = [x.path for x in scan_split(resolve_data_dir(args.data), "Training")[: b * 4]]
    rows: dict[str, float] = {}

    # 1. decode per use vs cached batch
    rows["decode_batch_s"] = timed(lambda: [resize_square(load_gray(f), s) for f in files[:b]])
    cache = torch.from_numpy(np.stack([resize_square(load_gray(f), s) for f in files])[:, None])
    idx = torch.randperm(len(cache))[:b]
    rows["cached_batch_s"] = timed(lambda: cache[idx].contiguous(), 20)

    # 2. per-image v2 augmentation vs one batched call
    a = recipe.augment
    per_image = v2.Compose(
        [
            v2.RandomAffine(
                degrees=a.rotation_deg,
                translate=(a.shift, a.shift),
                scale=(1 - a.zoom, 1 + a.zoom),
                shear=(-5.7, 5.7),
            ),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.ColorJitter(brightness=(0.85, 1.15), contrast=(0.7, 1.4)),
        ]
    )
    batch = cache[idx]
    rows["augment_v2_per_image_s"] = timed(lambda: torch.stack([per_image(x) for x in batch]))
    aug = BatchAugment(a)
    gen = torch.Generator().manual_seed(0)
    rows["augment_batched_s"] = timed(lambda: aug(batch, generator=gen))

    # 3. threads for one full fine-tuning step
    model = TumorClassifier(recipe.model).to(memory_format=torch.channels_last)
    model.set_trainable_fraction(1.0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = to_model_input(aug(batch, generator=gen), True)
    y = torch.randint(0, 4, (b,))

    def step() -> None:
        loss = weighted_smoothed_ce(model(x), y, None, 0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()

    all_threads = torch.get_num_threads()
    for n in sorted({1, all_threads}):
        torch.set_num_threads(n)
        rows[f"full_step_threads{n}_s"] = timed(step, 2)
    torch.set_num_threads(all_threads)

    out = {
        "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "batch": b,
        "size": s,
        "seconds_per_batch": {k: round(v, 4) for k, v in rows.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
