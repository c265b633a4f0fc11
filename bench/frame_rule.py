"""When should `--crop auto` crop? The frame rule on either axis against both (RESULTS §16.15).

`auto` crops a plane when its content box (infer/inputs.content_spans) spans under WIDE_FRAME of
the side: on either axis (the rule until §16.15) or on both. For each rule this reports how many
benchmark Training images and validation images it crops (already cropped: the issue asks that
they be left as they are), how many of the validation images framed by bench/framed.py
(centred and off-centre) it crops and answers right, and the same for the raw, uncropped
originals of the validation files. The crop itself is infer/inputs.frame_crop either way. The
test split is not read here.

    python bench/frame_rule.py [--model M] [--data DIR] [--raw RAW_DIR] \
        [--out bench/results/guard_compare/frame_rule.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from crop_compare import right_answers
from framed import framed
from robustness import model_and_split, model_data_args, report_head, write_report
from site_check import raw_originals

from brainmri.data.folders import resolve_data_dir, scan_split
from brainmri.data.images import load_gray
from brainmri.infer.inputs import WIDE_FRAME, content_spans, frame_crop

RULES: dict[str, Callable[[tuple[float, float]], bool]] = {
    "either": lambda s: min(s) < WIDE_FRAME,
    "both": lambda s: max(s) < WIDE_FRAME,
}


def measure(loaded, rule: Callable, planes: list[np.ndarray], labels: np.ndarray | None) -> dict:
    """How many planes the rule crops, and (with labels) how many are answered right."""
    crops = [rule(content_spans(g)) for g in planes]
    out = {"n": len(planes), "cropped": int(sum(crops))}
    if labels is not None:
        ready = [frame_crop(g) if c else g for g, c in zip(planes, crops, strict=True)]
        out["right"] = right_answers(loaded, ready, labels)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = model_data_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    ap.add_argument("--raw", type=Path, default=Path("../shared/data/brain-tumor-mri-raw"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/guard_compare/frame_rule.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    path, loaded, _, val, _ = model_and_split(args)
    data_dir = resolve_data_dir(args.data)
    originals = [load_gray(s.path) for s in val]
    labels = np.array([s.label for s in val])
    raw = raw_originals(val, args.raw)
    sets = {
        "training": ([load_gray(s.path) for s in scan_split(data_dir, "Training")], None),
        "validation": (originals, labels),
        "framed_validation": (
            [framed(g) for g in originals] + [framed(g, "corner") for g in originals],
            np.concatenate([labels, labels]),
        ),
        "raw_originals": (
            [load_gray(p) for p in raw],
            np.array([loaded.class_names.index(p.parent.name) for p in raw], dtype=int),
        ),
    }
    result = {
        name: {part: measure(loaded, rule, planes, y) for part, (planes, y) in sets.items()}
        for name, rule in RULES.items()
    }
    for name, parts in result.items():
        print(name, json.dumps(parts))
    report = {
        **report_head("frame_rule", __file__, argv, loaded.device),
        "model": str(path),
        "wide_frame": WIDE_FRAME,
        "rules": result,
        "seconds": round(time.time() - t0, 1),
    }
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
