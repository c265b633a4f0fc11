"""Pilot, on Training images only: Guided Grad-CAM (Selvaraju et al., 2017, §3) beside the map
`explain` draws. Nothing is chosen by it (docs/RESULTS.md §16.21).

Guided backpropagation (Captum's GuidedBackprop, its ReLU rule extended to the ReLU6 of
EfficientNet-Lite0) times explain's Grad-CAM map, absolute value summed over channels, scaled to
[0, 1]. For `--per-class` images per class of the model's own training split: the share of the
predicted class's map inside the head mask and how far the map moves when another class is
explained (the smallest mean |difference|), as bench/gradcam_compare.py measures them; that
move over the map's own mean level; and how alike the guided-backpropagation factor is between
classes (the largest correlation of the predicted class's with another class's).

    python bench/guided_gradcam_pilot.py [--per-class 4] \
        [--out bench/results/guard_compare/guided_pilot.json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from captum.attr import GuidedBackprop
from captum.attr._core.guided_backprop_deconvnet import _register_backward_hook
from gradcam_compare import pick_images
from robustness import model_and_split, model_data_args, report_head, write_report

from brainmri.data.images import resize_square
from brainmri.data.quality import check_image_bytes
from brainmri.infer.gradcam import head_mask, model_input, plane_maps


class GuidedBackpropReLU6(GuidedBackprop):
    """Captum's GuidedBackprop, whose ReLU rule also covers nn.ReLU6 modules."""

    def _register_hooks(self, module: torch.nn.Module) -> None:
        if isinstance(module, (torch.nn.ReLU, torch.nn.ReLU6)):
            self.backward_hooks.extend(_register_backward_hook(module, self._backward_hook, self))


def measures(maps: np.ndarray, k: int, mask: np.ndarray) -> dict:
    """Share of map k inside the mask; the smallest mean |difference| to another class's map."""
    inside = float((maps[k] * mask).sum() / max(float(maps[k].sum()), 1e-12))
    move = min(float(np.abs(maps[k] - maps[j]).mean()) for j in range(len(maps)) if j != k)
    return {"inside": inside, "move": move, "move_over_mean": move / float(maps[k].mean())}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument(
        "--out", type=Path, default=Path("bench/results/guard_compare/guided_pilot.json")
    )
    args = ap.parse_args(argv)
    path, lo, train, _, split = model_and_split(args)
    model = lo.model.eval()
    rows: dict[str, list[dict]] = {"gradcam_as_explain": [], "guided_gradcam": []}
    for s in pick_images(train, args.per_class):
        plane = check_image_bytes(s.path.read_bytes())
        x = model_input(plane, lo.image_size, lo.intensity, lo.channels_last)
        with torch.no_grad():
            k = int(model(x).argmax())
        mask = head_mask(np.array(resize_square(plane, lo.image_size)))
        cams = plane_maps(model, plane, lo.image_size, [0, 1, 2, 3], lo.intensity)
        with torch.enable_grad():
            xx = x.repeat(4, 1, 1, 1).clone().requires_grad_(True)
            gb = GuidedBackpropReLU6(model).attribute(xx, target=[0, 1, 2, 3]).detach()
        factor = gb.abs().sum(1).numpy()
        guided = factor * cams
        guided /= np.maximum(guided.max(axis=(1, 2), keepdims=True), 1e-12)
        for name, maps in (("gradcam_as_explain", cams), ("guided_gradcam", guided)):
            rows[name].append({"file": s.path.name} | measures(maps, k, mask))
        alike = [np.corrcoef(factor[k].ravel(), factor[j].ravel())[0, 1] for j in range(4)]
        rows["guided_gradcam"][-1]["factor_corr"] = max(
            float(c) for j, c in enumerate(alike) if j != k
        )
    summary = {
        name: {
            "mass_inside_head_mean": round(float(np.mean([r["inside"] for r in rs])), 4),
            "move_mean": round(float(np.mean([r["move"] for r in rs])), 4),
            "images_moving_over_0.03": int(sum(r["move"] > 0.03 for r in rs)),
            "move_over_mean_median": round(float(np.median([r["move_over_mean"] for r in rs])), 3),
        }
        for name, rs in rows.items()
    }
    corr = [r["factor_corr"] for r in rows["guided_gradcam"]]
    summary["guided_gradcam"] |= {
        "factor_corr_median": round(float(np.median(corr)), 4),
        "factor_corr_min": round(float(np.min(corr)), 4),
    }
    report = {
        **report_head("guided_gradcam_pilot", __file__, argv, lo.device),
        "model": str(path),
        "split": split | {"part": "train", "images": len(rows["guided_gradcam"])},
        "candidates": summary,
        "images": rows,
    }
    write_report(args.out, report)
    for name, v in summary.items():
        print(name, v)
    return report


if __name__ == "__main__":
    main()
