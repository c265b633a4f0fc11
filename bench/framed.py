"""The framed-image experiment: benchmark images placed in a 512x512 black frame, --crop modes.

A raw scan has the head in the middle of a large black field; the benchmark images were
cropped to the brain before training. Each chosen image is pasted at its own size into a
512x512 black canvas (centred, and once more off-centre) and classified with --crop off, on
and auto; the unframed originals are classified with off and auto (auto must leave them as
they are). Plain prediction (no TTA), the model's temperature, the path predict takes
(infer/inputs.auto_crop -> resize -> model).

    python bench/framed.py [--model M] [--split test|val] [--limit 48] [--out FILE.json]

--split val takes the model's own validation files (for choosing the frame rule);
--split test the official Testing split (first `limit` images, round robin over classes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from robustness import pick, report_head

from brainmri.data.folders import resolve_data_dir, scan_split
from brainmri.data.images import load_gray, resize_square
from brainmri.infer.core import load_for_inference
from brainmri.infer.inputs import auto_crop
from brainmri.model.checkpoint import read_metadata, shipped_model_path
from brainmri.train.data import model_split

CANVAS = 512


def framed(gray: np.ndarray, where: str = "centre") -> np.ndarray:
    """The plane pasted at its own size into a CANVAS x CANVAS black image."""
    h, w = gray.shape
    if max(h, w) > CANVAS:
        raise ValueError(f"{w}x{h} does not fit a {CANVAS} px frame")
    y, x = ((CANVAS - h) // 2, (CANVAS - w) // 2) if where == "centre" else (40, CANVAS - w - 60)
    out = np.zeros((CANVAS, CANVAS), np.uint8)
    out[y : y + h, x : x + w] = gray
    return out


def classify(loaded, planes: list[np.ndarray], mode: str) -> tuple[np.ndarray, list[bool]]:
    """(predicted class per plane, whether auto_crop cropped it) under one crop mode; empty
    for no planes (bench/crop_compare.py: `auto` crops none of the unframed validation images)."""
    if not planes:
        return np.zeros(0, dtype=np.int64), []
    prepared, cropped = [], []
    for g in planes:
        out, did = auto_crop(g, mode)
        prepared.append(resize_square(np.ascontiguousarray(out), loaded.image_size))
        cropped.append(bool(did))
    x = torch.from_numpy(np.stack(prepared)[:, None])
    return loaded.probs(x).argmax(dim=1).numpy(), cropped


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--split", choices=("test", "val"), default="test")
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    path = args.model or shipped_model_path()
    loaded = load_for_inference(path, "cpu")
    data_dir = resolve_data_dir(args.data)
    if args.split == "test":
        samples = pick(scan_split(data_dir, "Testing"), args.limit)
    else:
        samples = pick(model_split(data_dir, read_metadata(path))[1], args.limit)
    labels = np.array([s.label for s in samples])
    originals = [load_gray(s.path) for s in samples]
    t0 = time.time()
    conditions = {
        "original/off": (originals, "off"),
        "original/auto": (originals, "auto"),
        "framed/off": ([framed(g) for g in originals], "off"),
        "framed/on": ([framed(g) for g in originals], "on"),
        "framed/auto": ([framed(g) for g in originals], "auto"),
        "framed_offcentre/auto": ([framed(g, "corner") for g in originals], "auto"),
    }
    results = {}
    for name, (planes, mode) in conditions.items():
        pred, cropped = classify(loaded, planes, mode)
        wrong = [str(samples[i].path.name) for i in np.flatnonzero(pred != labels)]
        results[name] = {
            "right": int((pred == labels).sum()),
            "n": len(samples),
            "cropped": int(sum(cropped)),
            "wrong": wrong,
        }
        print(f"{name:<24} {results[name]['right']:>3}/{len(samples)} right, "
              f"{results[name]['cropped']} cropped")  # fmt: skip
    report = {
        **report_head("framed", __file__, argv, loaded.device),
        "model": str(path),
        "split": args.split,
        "images": [str(s.path.relative_to(data_dir)) for s in samples],
        "canvas": CANVAS,
        "results": results,
        "seconds": round(time.time() - t0, 1),
    }
    out = args.out or Path(f"bench/results/framed_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
