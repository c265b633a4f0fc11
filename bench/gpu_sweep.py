"""Train recipe variants one after another (on a GPU), and score each on the VALIDATION split,
clean and under the robustness perturbations: recipe choices are made here, never on Testing.

    python bench/gpu_sweep.py --data DIR --out OUTDIR --budget-s 420 \
        --variant cpu= --variant noint=data.intensity=none ...

A variant is NAME=override;override;... applied to the base recipe (default `cpu`). Writes
OUTDIR/summary.json after every variant (wall time, device, epochs, best validation loss and
accuracy, temperature, validation accuracy per perturbation, metrics.csv) and each variant's
best model as fp16 safetensors. Stops starting new variants once --budget-s is spent.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from brainmri.config import load_recipe
from brainmri.data.folders import read_file_list
from brainmri.data.images import load_gray, resize_square
from brainmri.infer.core import load_for_inference
from brainmri.model.checkpoint import load_model, save_model
from brainmri.train.loop import train


def _perturbations() -> dict:
    """name -> function(uint8 HxW, index) -> uint8 HxW, from bench/robustness.py."""
    spec = importlib.util.spec_from_file_location(
        "robustness", Path(__file__).with_name("robustness.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["robustness"] = module
    spec.loader.exec_module(module)
    return {p.name: p.fn for p in module.PERTURBATIONS}


def val_robustness(model_path: Path, run_dir: Path, data: Path, device: str) -> dict:
    loaded = load_for_inference(model_path, device)
    val = read_file_list(run_dir / "splits" / "val.txt", data)
    labels = torch.tensor([s.label for s in val])
    originals = [load_gray(s.path) for s in val]
    out = {}
    for name, fn in _perturbations().items():
        imgs = [resize_square(fn(g, i), loaded.image_size) for i, g in enumerate(originals)]
        probs = loaded.probs(torch.from_numpy(np.stack(imgs)[:, None]), batch_size=128)
        out[name] = round(float((probs.argmax(1) == labels).float().mean()), 5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--base", default="cpu")
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument(
        "--set",
        dest="common",
        action="append",
        default=[],
        help="override applied to every variant",
    )
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--runs", type=Path, default=Path("/tmp/sweep-runs"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    summary: dict = {
        "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "variants": {},
    }
    for item in args.variant or ["base="]:
        name, _, spec = item.partition("=")
        if time.time() - t_all > args.budget_s:
            summary["variants"][name] = {"skipped": "time budget spent"}
            continue
        overrides = args.common + [s for s in spec.split(";") if s]
        recipe = load_recipe(args.base, overrides)
        run_dir = args.runs / name
        shutil.rmtree(run_dir, ignore_errors=True)
        t0 = time.time()
        entry: dict = {"overrides": overrides}
        try:
            result = train(recipe, args.data, run_dir, device=args.device)
            entry.update(
                wall_s=round(time.time() - t0, 1),
                epochs=result.epochs_run,
                best_val_loss=round(result.best_val_loss, 5),
                best_val_acc=result.best_val_acc,
            )
            model, meta = load_model(result.best_path)
            entry["temperature"] = meta["info"].get("temperature")
            recipe_used = load_recipe(run_dir / "recipe.yaml")
            save_model(
                args.out / f"{name}.safetensors", model, recipe_used, meta["info"], half=True
            )
            entry["val_robustness"] = val_robustness(
                result.best_path, run_dir, args.data, args.device
            )
            entry["metrics_csv"] = (run_dir / "metrics.csv").read_text()
        except Exception as exc:  # keep going: one broken variant must not lose the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
        summary["variants"][name] = entry
        summary["total_s"] = round(time.time() - t_all, 1)
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(
            json.dumps({name: {k: v for k, v in entry.items() if k != "metrics_csv"}}), flush=True
        )


if __name__ == "__main__":
    main()
