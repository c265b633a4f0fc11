"""Ship a run's best model inside the package as fp16, if fp16 leaves validation unchanged.

    python bench/ship_model.py --run runs/cpu-main \
        [--dest src/brainmri/weights/lite0_cpu.safetensors] [--why "docs/RESULTS.md §N"]

Compares fp32 and fp16 predictions on the run's own validation split (never the test split):
the fp16 copy is written only if every validation prediction is the same; otherwise fp32 is.
Writes bench/results/ship_model.json with the comparison. A run that started from a model file
(`model.init_model`, e.g. `shipped`) ships with that setting cleared and the starting file named
by its sha256 in `info.init_model`, so the shipped recipe never points at the file it replaces.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from brainmri.config import Recipe, load_recipe
from brainmri.data.cache import cache_samples
from brainmri.data.folders import read_file_list
from brainmri.infer.core import load_for_inference
from brainmri.model.checkpoint import SHIPPED_MODEL, load_model, save_model
from brainmri.model.shipped import shipped_model_path


def resolve_init(recipe: Recipe, info: dict) -> None:
    """Move `model.init_model` from the recipe into `info`, naming the start file by sha256."""
    spec = recipe.model.init_model
    if not spec:
        return
    path = shipped_model_path() if spec == "shipped" else Path(spec)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    info["init_model"] = f"{spec} ({path.name}, sha256 {digest})"
    recipe.model.init_model = None


def shipped_info(args: argparse.Namespace, info: dict, recipe: Recipe) -> dict:
    """The run's `info` plus where it was shipped from, why, and the machine it trained on."""
    best = args.run / "models" / "best.safetensors"
    info = dict(info, shipped_from=str(best), shipped=time.strftime("%Y-%m-%d"))
    resolve_init(recipe, info)
    if args.why:
        info["shipped_for"] = args.why
    env_file = args.run / "environment.json"
    if env_file.is_file() and "trained_on" not in info:
        env = json.loads(env_file.read_text())
        info["trained_on"] = (
            f"{env['device']}: {env['cpu_count']}-core {env['cpu_model']} "
            f"({env['cpu_capability']}), torch {env['torch']}"
        )
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--dest", type=Path, default=Path("src/brainmri/weights") / SHIPPED_MODEL)
    ap.add_argument("--why", default=None, help="where the choice is documented (info.shipped_for)")
    ap.add_argument("--report", type=Path, default=Path("bench/results/ship_model.json"))
    args = ap.parse_args()
    recipe = load_recipe(args.run / "recipe.yaml")
    data = Path(json.loads((args.run / "run.json").read_text())["data"])
    val = read_file_list(args.run / "splits" / "val.txt", data)
    images, labels = cache_samples(val, recipe.data.image_size, desc="decode val")
    best = args.run / "models" / "best.safetensors"
    model, meta = load_model(best)
    info = shipped_info(args, meta["info"], recipe)
    tmp = args.dest.with_suffix(".fp16.tmp.safetensors")
    save_model(tmp, model, recipe, info, half=True)
    out = {
        name: load_for_inference(path, "cpu").logits(images)[1][0]
        for name, path in (("fp32", best), ("fp16", tmp))
    }
    same = bool((out["fp32"].argmax(1) == out["fp16"].argmax(1)).all())
    p32, p16 = (torch.softmax(out[k], 1) for k in ("fp32", "fp16"))
    report = {
        "command": " ".join(["python"] + sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "run": str(args.run),
        "n_val": len(val),
        "val_acc_fp32": float((out["fp32"].argmax(1) == labels).float().mean()),
        "val_acc_fp16": float((out["fp16"].argmax(1) == labels).float().mean()),
        "same_predictions": same,
        "max_prob_diff": float((p32 - p16).abs().max()),
        "shipped_dtype": "float16" if same else "float32",
        "init_model": info.get("init_model"),
        "dest": str(args.dest),
    }
    if same:
        tmp.replace(args.dest)
    else:
        tmp.unlink()
        save_model(args.dest, model, recipe, info)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
