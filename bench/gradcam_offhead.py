"""Where the part of an explain map that lies off the head is: at the head's rim, or far from it.

On the same validation images as bench/gradcam_compare.py (the model's own grouped split, the
first `--per-class` per class in file order; not the test split), the predicted class's map as
`brainmri explain` draws it is split into three parts: inside the head mask, a rim of `--rim`
pixels outside the mask (one cell of the stride-16 stage by default: what upsampling a coarse
map spreads over the mask's edge), and the rest of the background. It also reports the map's
mean level far from the head relative to its mean level inside it (a floor the map keeps
everywhere). A uniform map is shown beside each image as the reference.

    python bench/gradcam_offhead.py [--model M] [--data D] [--per-class 12] [--rim 16] \
        [--methods gradcam,occlusion] [--out bench/results/guard_compare/gradcam_offhead.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from gradcam_compare import pick_images
from robustness import model_and_split, model_data_args, report_head, write_report

from brainmri.data.images import resize_square
from brainmri.data.quality import check_image_bytes
from brainmri.infer.gradcam import head_mask, model_input, plane_maps


def split_mass(cam: np.ndarray, mask: np.ndarray, rim: int) -> dict[str, float]:
    """Shares of the map's mass inside the mask, in the `rim`-pixel band around it, and
    beyond; and the map's mean level beyond the band over its mean level inside the mask."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rim + 1, 2 * rim + 1))
    grown = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
    band, far = grown & ~mask, ~grown
    total = float(cam.sum())
    inside_level = float(cam[mask].mean()) if mask.any() else 0.0
    return {
        "inside": float(cam[mask].sum()) / total,
        "rim": float(cam[band].sum()) / total,
        "far": float(cam[far].sum()) / total,
        "far_level_over_inside_level": float(cam[far].mean()) / inside_level if far.any() else 0.0,
        "rim_area": float(band.mean()),
        "far_area": float(far.mean()),
    }


def summarize(rows: list[dict]) -> dict[str, float]:
    keys = ("inside", "rim", "far", "far_level_over_inside_level", "rim_area", "far_area")
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument("--rim", type=int, default=16, help="pixels of the band outside the head")
    ap.add_argument("--methods", default="gradcam", help="comma-separated: gradcam, occlusion")
    ap.add_argument(
        "--out", type=Path, default=Path("bench/results/guard_compare/gradcam_offhead.json")
    )
    args = ap.parse_args(argv)
    t0 = time.time()
    path, lo, _, val, split = model_and_split(args)
    images = pick_images(val, args.per_class)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows: dict[str, list[dict]] = {m: [] for m in [*methods, "uniform"]}
    for s in images:
        plane = check_image_bytes(s.path.read_bytes())
        x = model_input(plane, lo.image_size, lo.intensity, lo.channels_last)
        with torch.inference_mode():
            k = int(lo.model(x).argmax())
        mask = head_mask(np.array(resize_square(plane, lo.image_size)))
        for m in methods:
            cam = plane_maps(lo.model, plane, lo.image_size, k, lo.intensity, lo.channels_last, m)
            rows[m].append({"file": s.path.name, **split_mass(cam[0], mask, args.rim)})
        uniform = np.ones(mask.shape, np.float32)
        rows["uniform"].append({"file": s.path.name, **split_mass(uniform, mask, args.rim)})
    report = {
        **report_head("gradcam_offhead", __file__, argv, lo.device),
        "model": str(path),
        "split": split | {"images": len(images)},
        "rim_pixels": args.rim,
        "image_size": lo.image_size,
        "summary": {m: summarize(rs) for m, rs in rows.items()},
        "images": rows,
        "seconds": round(time.time() - t0, 1),
    }
    write_report(args.out, report)
    for m, v in report["summary"].items():
        print(m, v)
    return report


if __name__ == "__main__":
    main()
