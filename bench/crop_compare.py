"""Compare auto-crop candidates on framed validation images (docs/RESULTS.md §16.12).

Each candidate cuts a framed plane to its content box (infer/inputs.content_box) plus a margin
per side, the box either as it is ("box") or first widened to a square about its centre
("square"). It is applied only where `--crop auto` crops (has_wide_frame). Inputs: the model's
validation images pasted into bench/framed.py's 512-px frame, centred and off-centre, and the
unframed validation images that auto already crops; with --raw also the raw, uncropped
originals of the validation files (brain-tumor-mri-raw/Training, same file names; §16.13), each
cropped by the candidate where auto crops and taken as it is elsewhere. Reported per candidate:
right answers on each set (plain prediction, the predict path). The test split is not read here.

    python bench/crop_compare.py [--model M] [--data DIR] [--raw RAW_DIR] \
        [--out bench/results/guard_compare/crop_compare.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from framed import classify, framed
from robustness import model_and_split, model_data_args, report_head, write_report
from site_check import raw_originals

from brainmri.data.images import load_gray
from brainmri.infer.inputs import (
    CROP_MARGIN,
    auto_crop,
    box_crop,
    content_box,
    has_wide_frame,
)

MARGINS = (0.0, 0.03, 0.06, 0.10, 0.15)
SHAPES = ("box", "square")


def candidate_crop(gray: np.ndarray, margin: float, shape: str) -> np.ndarray:
    """The plane cut to its content box (a square about its centre for "square") + margin."""
    box = content_box(gray)
    if box is None:
        return gray
    if shape == "square":
        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0)
        x0, y0 = (x0 + x1 - side) // 2, (y0 + y1 - side) // 2
        box = (x0, y0, x0 + side, y0 + side)
    return box_crop(gray, box, margin)


def auto_with(gray: np.ndarray, margin: float, shape: str) -> np.ndarray:
    """What `--crop auto` would give with this candidate's crop."""
    return candidate_crop(gray, margin, shape) if has_wide_frame(gray) else gray


def right_answers(loaded, planes: list[np.ndarray], labels: np.ndarray) -> int:
    """Planes answered right as they are (bench/framed.py's path with the crop off)."""
    return int((classify(loaded, planes, "off")[0] == labels).sum())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument("--raw", type=Path, default=None, help="raw benchmark folder (§16.13)")
    ap.add_argument(
        "--out", type=Path, default=Path("bench/results/guard_compare/crop_compare.json")
    )
    args = ap.parse_args(argv)
    t0 = time.time()
    path, loaded, _, val, _ = model_and_split(args)
    originals = [load_gray(s.path) for s in val]
    labels = np.array([s.label for s in val])
    copies = [framed(g) for g in originals] + [framed(g, "corner") for g in originals]
    copy_labels = np.concatenate([labels, labels])
    unframed = [i for i, g in enumerate(originals) if has_wide_frame(g)]
    assert all(has_wide_frame(g) for g in copies), "every framed copy is cropped by auto"
    raw = raw_originals(val, args.raw) if args.raw is not None else []
    raw_planes = [load_gray(p) for p in raw]
    raw_labels = np.array([loaded.class_names.index(p.parent.name) for p in raw], dtype=int)
    for g in copies[:5] + [originals[i] for i in unframed] + raw_planes[:20]:  # shipped crop
        assert np.array_equal(auto_crop(g, "auto")[0], auto_with(g, CROP_MARGIN, "box"))
    rows = []
    for shape in SHAPES:
        for margin in MARGINS:
            framed_right = right_answers(
                loaded, [candidate_crop(g, margin, shape) for g in copies], copy_labels
            )
            plain_right = right_answers(
                loaded, [candidate_crop(originals[i], margin, shape) for i in unframed],
                labels[unframed],
            )  # fmt: skip
            row = {"shape": shape, "margin": margin, "framed_right": framed_right,
                   "unframed_cropped_right": plain_right}  # fmt: skip
            if raw:
                row["raw_right"] = right_answers(
                    loaded, [auto_with(g, margin, shape) for g in raw_planes], raw_labels
                )
            rows.append(row)
            print(f"{shape:6s} margin {margin:.2f}: framed {framed_right}/{len(copies)}, "
                  f"unframed cropped {plain_right}/{len(unframed)}"
                  + (f", raw originals {row['raw_right']}/{len(raw)}" if raw else ""))  # fmt: skip
    report = {
        **report_head("crop_compare", __file__, argv, loaded.device),
        "model": str(path),
        "val": len(val),
        "framed_copies": len(copies),
        "unframed_cropped": [val[i].path.name for i in unframed],
        "unframed_right_without_crop": right_answers(
            loaded, [originals[i] for i in unframed], labels[unframed]
        ),
        "raw_originals": len(raw),
        "raw_cropped_by_auto": sum(has_wide_frame(g) for g in raw_planes),
        "raw_right_without_crop": (
            right_answers(loaded, raw_planes, raw_labels) if raw else None
        ),
        "candidates": rows,
        "seconds": round(time.time() - t0, 1),
    }
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
