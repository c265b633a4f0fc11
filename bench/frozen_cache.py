"""Before/after of frozen-stage feature caching: the recipe's frozen stage, run both ways.

    python bench/frozen_cache.py [--config cpu] [--data ../shared/data/brain-tumor-mri]

Trains only stage 1 (the frozen backbone; later stages set to 0 epochs) of the recipe twice
from the same seed: the usual way (augmented images through the backbone every step) and with
`train.cache_frozen_features=true` (features of the un-augmented images computed once, then the
head trains on them). Reports wall time of the stage, seconds per epoch, and the validation
loss/accuracy it ends with, and projects the time of a frozen stage of E epochs both ways.
Writes bench/results/frozen_cache.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from brainmri.config import load_recipe
from brainmri.data.folders import resolve_data_dir
from brainmri.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="cpu")
    ap.add_argument("--data", default=None)
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--project-epochs", type=int, default=25, help="seed recipe's frozen epochs")
    ap.add_argument("--out", type=Path, default=Path("bench/results/frozen_cache.json"))
    args = ap.parse_args()
    data = resolve_data_dir(args.data)
    base = load_recipe(args.config, args.overrides)
    # one model (not the recipe's ensemble), stage 1 only
    later = ["ensemble=1"] + [
        f"train.stages.{i}.epochs=0" for i in range(1, len(base.train.stages))
    ]
    report: dict = {
        "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu_count": os.cpu_count(),
        "recipe": args.config,
        "image_size": base.data.image_size,
        "frozen_epochs": base.train.stages[0].epochs,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for cached in (False, True):
            recipe = load_recipe(
                args.config,
                [*args.overrides, *later, f"train.cache_frozen_features={str(cached).lower()}"],
            )
            res = train(recipe, data, Path(tmp) / str(cached))
            rows = list(csv.DictReader((Path(tmp) / str(cached) / "metrics.csv").open()))
            epoch_s = [float(r["seconds"]) for r in rows]
            report["cached" if cached else "uncached"] = {
                "stage_wall_seconds": round(res.wall_seconds, 1),
                "epoch_seconds": epoch_s,
                "one_time_seconds": round(res.wall_seconds - sum(epoch_s), 1),
                "val_loss": float(rows[-1]["val_loss"]),
                "val_acc": float(rows[-1]["val_acc"]),
            }
    e = args.project_epochs
    for key in ("uncached", "cached"):
        r = report[key]
        steady = r["epoch_seconds"][1:] or r["epoch_seconds"]  # after the first, warm-up epoch
        per_epoch = sum(steady) / len(steady)
        r[f"projected_seconds_{e}_epochs"] = round(r["one_time_seconds"] + e * per_epoch, 1)
    report["speedup_stage"] = round(
        report["uncached"]["stage_wall_seconds"] / report["cached"]["stage_wall_seconds"], 2
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
