"""Robustness of a model to scans from other hospitals: accuracy on perturbed Testing images.

Each test image is decoded once (load_gray: one uint8 luminance plane at its own resolution),
then each perturbation of the table below is applied to that plane *before* the model's own
preprocessing, and the result goes down the same path as `brainmri evaluate`: resize to the
model's image_size -> predict_logits (intensity mode, channels_last, batch 64) -> softmax with
the model's fitted temperature -> compute_metrics.

    python bench/robustness.py --model runs/cpu-XXXX/models/best.safetensors \
        [--data DIR] [--out bench/results/robustness.json] [--limit N] [--tta 1]

Prints a table (accuracy, change from clean, errors, macro AUC, per-class recall) and writes
JSON with the machine, date and command. docs/ROBUSTNESS.md describes every perturbation.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image

from brainmri.data.folders import Sample, resolve_data_dir, scan_split
from brainmri.data.images import load_gray, resize_square
from brainmri.errors import BrainMRIError
from brainmri.evaluate.metrics import compute_metrics
from brainmri.infer.core import InferenceModel, load_for_inference
from brainmri.model.checkpoint import read_metadata, shipped_model_path
from brainmri.platform_info import cpu_capability, cpu_model
from brainmri.train.data import model_split

# --- perturbations: f(gray uint8 HxW at original resolution, image index) -> uint8 HxW -------
REFERENCE_SIDE = 224
"""Pixel sizes (blur sigma) are given for a 224-px image and scaled to each image's size."""


def _lut(table: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    lut = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    return lambda g: lut[g]


def _contrast(g: np.ndarray, i: int, factor: float = 1.4) -> np.ndarray:
    mean = float(g.mean())
    return np.clip(np.rint((g.astype(np.float32) - mean) * factor + mean), 0, 255).astype(np.uint8)


def _brightness(g: np.ndarray, i: int, shift: int = 25) -> np.ndarray:
    return np.clip(g.astype(np.int16) + shift, 0, 255).astype(np.uint8)


def _gamma(gamma: float) -> Callable[[np.ndarray, int], np.ndarray]:
    apply = _lut(255.0 * (np.arange(256) / 255.0) ** gamma)
    return lambda g, i: apply(g)


def _blur(g: np.ndarray, i: int, sigma: float = 1.5) -> np.ndarray:
    h, w = g.shape
    sx, sy = sigma * w / REFERENCE_SIDE, sigma * h / REFERENCE_SIDE
    return cv2.GaussianBlur(g, (0, 0), sigmaX=sx, sigmaY=sy, borderType=cv2.BORDER_REFLECT_101)


def _lowres(g: np.ndarray, i: int, factor: int = 2) -> np.ndarray:
    h, w = g.shape
    small = Image.fromarray(g).resize(
        (max(1, w // factor), max(1, h // factor)), Image.Resampling.BILINEAR
    )
    return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)


def _jpeg(quality: int) -> Callable[[np.ndarray, int], np.ndarray]:
    def encode(g: np.ndarray, i: int) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(g, mode="L").save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()

    return encode


def _rotate(g: np.ndarray, i: int, degrees: float = 8.0) -> np.ndarray:
    angle = degrees if i % 2 == 0 else -degrees
    im = Image.fromarray(g).rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(im, dtype=np.uint8)


class Perturbation(NamedTuple):
    name: str
    description: str
    fn: Callable[[np.ndarray, int], np.ndarray]


PERTURBATIONS: tuple[Perturbation, ...] = (
    Perturbation("clean", "none: the decoded image as is", lambda g, i: g),
    Perturbation("contrast", "contrast x1.4 about the image mean, clipped to 0..255", _contrast),
    Perturbation("brightness", "+25 intensity levels, clipped to 0..255", _brightness),
    Perturbation("gamma_0.7", "255*(x/255)^0.7 (brighter mid-tones)", _gamma(0.7)),
    Perturbation("gamma_1.5", "255*(x/255)^1.5 (darker mid-tones)", _gamma(1.5)),
    Perturbation("blur", "Gaussian blur, sigma 1.5 px per 224 px of image side (per axis)", _blur),
    Perturbation("lowres", "2x down then up, bilinear (PIL, antialiased down)", _lowres),
    Perturbation("jpeg30", "re-encoded as grayscale JPEG quality 30", _jpeg(30)),
    Perturbation(
        "gray_reencode",
        "re-saved as an 8-bit grayscale (L-mode) JPEG quality 90 and decoded: "
        "an RGB-mode file stored as grayscale by another site",
        _jpeg(90),
    ),
    Perturbation(
        "rotate",
        "rotated +8/-8 degrees alternately (even/odd image index), bilinear, black fill",
        _rotate,
    ),
)
BY_NAME = {p.name: p for p in PERTURBATIONS}


# --- the benchmark ---------------------------------------------------------------------------
def pick(samples: list[Sample], limit: int | None) -> list[Sample]:
    """All samples, or the first `limit` taken round-robin over classes (every class present)."""
    if not limit or limit >= len(samples):
        return samples
    seen: dict[int, int] = {}
    ranked = []
    for s in samples:  # scan_split order: class, then file name
        ranked.append((seen.get(s.label, 0), s.label, s))
        seen[s.label] = seen.get(s.label, 0) + 1
    ranked.sort(key=lambda r: (r[0], r[1]))
    return sorted((r[2] for r in ranked[:limit]), key=lambda s: (s.label, str(s.path)))


def perturbed_batch(
    originals: list[np.ndarray], p: Perturbation, size: int, pool: ThreadPoolExecutor
) -> torch.Tensor:
    """(N, 1, size, size) uint8: perturb each original plane, then the model's resize."""

    def one(item: tuple[int, np.ndarray]) -> np.ndarray:
        i, g = item
        out = p.fn(g, i)
        if out.shape != g.shape or out.dtype != np.uint8:
            raise AssertionError(f"{p.name} returned {out.shape} {out.dtype} for {g.shape} uint8")
        return resize_square(out, size)

    planes = list(pool.map(one, enumerate(originals)))
    return torch.from_numpy(np.stack(planes)[:, None])


def model_data_args(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--model and --data, as every bench script that reads the model's own split takes them."""
    ap.add_argument("--model", type=Path, default=None, help="model file (default: shipped)")
    ap.add_argument("--data", type=Path, default=None, help="benchmark folder with Training/")
    return ap


def model_and_split(args: argparse.Namespace) -> tuple[Path, InferenceModel, list, list, dict]:
    """(model file, the model loaded on the CPU, its own train and validation samples of the
    benchmark, the split's description) for a script that took model_data_args' options."""
    path = args.model or shipped_model_path()
    loaded = load_for_inference(path, "cpu")
    train, val, split = model_split(resolve_data_dir(args.data), read_metadata(path))
    return path, loaded, train, val, split


def write_report(path: Path, report: dict) -> None:
    """A bench result file: the report as indented JSON, its folder made when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")


def report_head(name: str, script: str, argv: list[str] | None, device: torch.device) -> dict:
    """The first keys of every bench result file: which benchmark, when, the command that
    reproduces it (`script` with `argv`, or this process's own arguments) and the machine."""
    return {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": shlex.join(["python", *(sys.argv if argv is None else [script, *argv])]),
        "machine": machine(device),
    }


def machine(device: torch.device) -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="model .safetensors from train")
    ap.add_argument("--data", type=Path, default=None, help="Kaggle-layout folder with Testing/")
    ap.add_argument("--out", type=Path, default=Path("bench/results/robustness.json"))
    ap.add_argument("--limit", type=int, default=None, help="score N test images (all classes)")
    ap.add_argument("--tta", type=int, default=1, choices=range(1, 6), help="TTA views")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if any)")
    ap.add_argument(
        "--only",
        default=None,
        help=f"comma list of perturbations (default all: {','.join(BY_NAME)})",
    )
    ap.add_argument("--workers", type=int, default=None, help="threads for decode/perturb")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    chosen = list(PERTURBATIONS)
    if args.only:
        unknown = [n for n in args.only.split(",") if n not in BY_NAME]
        if unknown:
            raise BrainMRIError(f"unknown perturbation(s) {unknown}: choose from {list(BY_NAME)}")
        chosen = [BY_NAME[n] for n in args.only.split(",")]

    loaded = load_for_inference(args.model, args.device)
    dev, class_names, size = loaded.device, loaded.class_names, loaded.image_size

    data_dir = resolve_data_dir(args.data)
    test = pick(scan_split(data_dir, "Testing"), args.limit)
    if not test:
        raise BrainMRIError(f"no Testing/<class>/ images under {data_dir}")
    labels = np.array([s.label for s in test], dtype=np.int64)

    t_start = time.time()
    workers = args.workers or min(os.cpu_count() or 1, 8)
    results: dict[str, dict] = {}
    with ThreadPoolExecutor(workers) as pool:
        originals = list(pool.map(lambda s: load_gray(s.path), test))
        decode_s = time.time() - t_start
        for p in chosen:
            t0 = time.time()
            images = perturbed_batch(originals, p, size, pool)
            probs = loaded.probs(images, args.tta, args.batch_size)
            m = compute_metrics(probs.numpy(), labels, class_names)
            results[p.name] = {
                "n": m["n"],
                "accuracy": m["accuracy"],
                "errors": m["errors"],
                "recall": {c: m["per_class"][c]["recall"] for c in class_names},
                "macro_auc": m["macro_auc"],
                "macro_f1": m["macro_f1"],
                "log_loss": m["log_loss"],
                "ece": m["ece"],
                "confusion_matrix": m["confusion_matrix"],
                "seconds": round(time.time() - t0, 2),
            }
            print(f"  {p.name}: accuracy {m['accuracy']:.4f} ({time.time() - t0:.1f}s)", flush=True)
    if "clean" in results:
        for r in results.values():
            r["delta_accuracy"] = r["accuracy"] - results["clean"]["accuracy"]

    report = {
        **report_head("robustness", __file__, argv, dev),
        "model": str(args.model),
        "model_info": loaded.meta["info"],
        "data": str(data_dir),
        "n_test": len(test),
        "limit": args.limit,
        "image_size": size,
        "intensity": loaded.intensity,
        "temperature": loaded.temperature,
        "tta": args.tta,
        "decode_seconds": round(decode_s, 2),
        "total_seconds": round(time.time() - t_start, 2),
        "perturbations": {p.name: p.description for p in chosen},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(format_table(results, class_names))
    print(f"wrote {args.out}")
    return report


def format_table(results: dict[str, dict], class_names: list[str]) -> str:
    short = [c[:5] for c in class_names]
    head = f"{'perturbation':<14}{'acc':>8}{'d_acc':>8}{'errors':>8}{'macroAUC':>10}" + "".join(
        f"{'rec.' + s:>11}" for s in short
    )
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        auc = "n/a" if r["macro_auc"] is None else f"{r['macro_auc']:.4f}"
        delta = f"{r['delta_accuracy']:+.4f}" if "delta_accuracy" in r else ""
        lines.append(
            f"{name:<14}{r['accuracy']:>8.4f}{delta:>8}{r['errors']:>8}{auc:>10}"
            + "".join(f"{r['recall'][c]:>11.4f}" for c in class_names)
        )
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main()
    except BrainMRIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
