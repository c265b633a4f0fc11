"""Compare CAM methods and layers for `brainmri explain` on validation images (not the test split).

For each candidate (a pytorch-grad-cam method and target layer of the shipped model) and each of
`--per-class` validation images per class (the model's own grouped split, in file order): the
share of the predicted class's map inside the head mask (guard_eval's measure) and how far the
map moves when another class is explained (mean |difference|, the smallest over the other
classes). docs/RESULTS.md §16 has the rule that picks.

    python bench/gradcam_compare.py [--model M] [--per-class 12] \
        [--round 1|2|3|4|5|6|7] [--out bench/results/guard_compare/gradcam.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from robustness import model_and_split, model_data_args, report_head, write_report

from brainmri.data.images import resize_square
from brainmri.data.quality import check_image_bytes
from brainmri.infer.gradcam import cut_border, cut_floor, head_mask, model_input
from brainmri.infer.occlusion import occlusion_maps

CANDIDATES: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "gradcam_last": ("GradCAM", ("bn2",), {}),
    "gradcampp_last": ("GradCAMPlusPlus", ("bn2",), {}),
    "hirescam_last": ("HiResCAM", ("bn2",), {}),
    "layercam_last": ("LayerCAM", ("bn2",), {}),
    "gradcam_stage4": ("GradCAM", ("blocks.4",), {}),
    "layercam_stage4": ("LayerCAM", ("blocks.4",), {}),
    "gradcam_last_stage4": ("GradCAM", ("bn2", "blocks.4"), {}),
}
"""§16.2's candidates: (pytorch-grad-cam method, target layers, call options)."""

SECOND_ROUND: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "gradcam_stage4": ("GradCAM", ("blocks.4",), {}),
    "gradcam_stage4_augsmooth": ("GradCAM", ("blocks.4",), {"aug_smooth": True}),
    "gradcam_stage4_eigensmooth": ("GradCAM", ("blocks.4",), {"eigen_smooth": True}),
    "xgradcam_stage4": ("XGradCAM", ("blocks.4",), {}),
    "elementwise_stage4": ("GradCAMElementWise", ("blocks.4",), {}),
    "hirescam_stage4": ("HiResCAM", ("blocks.4",), {}),
    "gradcam_stage2": ("GradCAM", ("blocks.2",), {}),
}
"""§16.5's candidates (`--round 2`): the chosen map with the library's smoothing options, other
gradient weightings at the same stage, and the stride-8 stage."""

THIRD_ROUND: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "gradcam_stage4": ("GradCAM", ("blocks.4",), {}),
    "scorecam_stage4": ("ScoreCAM", ("blocks.4",), {}),
    "ablationcam_stage4": ("AblationCAM", ("blocks.4",), {}),
    "scorecam_stage2": ("ScoreCAM", ("blocks.2",), {}),
    "eigengradcam_stage4": ("EigenGradCAM", ("blocks.4",), {}),
    "shapleycam_stage4": ("ShapleyCAM", ("blocks.4",), {}),
}
"""§16.6's candidates (`--round 3`): channel weights from masked or ablated inputs instead of
gradients, and the gradient methods not tried before."""

FOURTH_ROUND: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "gradcam_stage4": ("GradCAM", ("blocks.4",), {}),
    "gradcam_stage4_pad16": ("GradCAM", ("blocks.4",), {"pad": 16}),
    "gradcam_stage4_pad32": ("GradCAM", ("blocks.4",), {"pad": 32}),
    "gradcam_last_pad32": ("GradCAM", ("bn2",), {"pad": 32}),
}
"""§16.7's candidates (`--round 4`): the shipped map computed on the input surrounded by `pad`
black pixels per side, so that the convolutions' zero-padded border lies outside the image; the
map is cut back to the image and rescaled to [0, 1]."""

FIFTH_ROUND: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "gradcam_stage4_pad32": ("GradCAM", ("blocks.4",), {"pad": 32}),
    "occlusion": ("Occlusion", (), {}),
}
"""§16.8's candidates (`--round 5`): the shipped map (since §16.7) and occlusion sensitivity
(infer/occlusion.py: a black 32-px window, stride 16, Captum)."""

SIXTH_ROUND: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "gradcam_stage4_pad32": ("GradCAM", ("blocks.4",), {"pad": 32}),
    "gradcam_stage4_pad32_cut15": ("GradCAM", ("blocks.4",), {"pad": 32, "cut": 0.15}),
}
"""§16.20's candidates (`--round 6`): the shipped map, and the same with every value under 15 %
of the map's maximum set to 0 (the Grad-CAM paper's localization threshold)."""

SEVENTH_ROUND: dict[str, tuple[str, tuple[str, ...], dict]] = {
    "gradcam_stage4_pad32_cut15": ("GradCAM", ("blocks.4",), {"pad": 32, "cut": 0.15}),
    "refgradcam_stage4_pad32_cut15": (
        "ReferenceGradCAM", ("blocks.4",), {"pad": 32, "cut": 0.15}
    ),
}  # fmt: skip
"""§16.21's candidates (`--round 7`): the shipped map (since §16.20), and the same with the
activations taken relative to an all-black input's (infer/gradcam_reference.py)."""

ROUNDS = {
    1: CANDIDATES, 2: SECOND_ROUND, 3: THIRD_ROUND, 4: FOURTH_ROUND, 5: FIFTH_ROUND,
    6: SIXTH_ROUND, 7: SEVENTH_ROUND,
}  # fmt: skip


def cam_maps(
    model, x: torch.Tensor, method: str, layers: tuple[str, ...], options: dict | None = None
) -> np.ndarray:
    """Maps (4, S, S) of one model input for every class, with a pytorch-grad-cam method (or
    "Occlusion": infer/occlusion.py)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from brainmri.infer.gradcam_reference import ReferenceGradCAM, black_reference

    if method == "Occlusion":
        return occlusion_maps(model, x.repeat(4, 1, 1, 1), [0, 1, 2, 3])
    modules = dict(model.backbone.named_modules())
    targets = [modules[name] for name in layers]
    with torch.inference_mode(False), torch.enable_grad():
        xx = x.detach().clone().float().repeat(4, 1, 1, 1)
        if method == "ReferenceGradCAM":
            make = ReferenceGradCAM(model, targets, black_reference(xx))
        else:
            make = getattr(pytorch_grad_cam, method)(model=model, target_layers=targets)
        with make as cam:
            cam.batch_size = 64  # ScoreCAM's masked inputs per forward (its default is 16)
            classes = [ClassifierOutputTarget(c) for c in range(4)]
            return cam(input_tensor=xx, targets=classes, **(options or {}))


def pick_images(val: list, per_class: int) -> list:
    by_class: dict[str, list] = {}
    for s in sorted(val, key=lambda s: s.path.name):
        by_class.setdefault(s.class_name, []).append(s)
    return [s for c in sorted(by_class) for s in by_class[c][:per_class]]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument("--per-class", type=int, default=12)
    ap.add_argument(
        "--round", type=int, choices=tuple(ROUNDS), default=1,
        help="1: §16.2's candidates; 2: §16.5's (smoothing, other weightings, stride 8); "
        "3: §16.6's (ScoreCAM, AblationCAM, EigenGradCAM, ShapleyCAM); "
        "4: §16.7's (the input padded with black); 5: §16.8's (occlusion); "
        "6: §16.20's (the map cut at 15 %% of its maximum); "
        "7: §16.21's (activations relative to an all-black input's)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("bench/results/guard_compare/gradcam.json"))
    args = ap.parse_args(argv)
    t0 = time.time()
    path, lo, _, val, split = model_and_split(args)
    model = lo.model.eval()
    images = pick_images(val, args.per_class)
    candidates = ROUNDS[args.round]
    seconds = dict.fromkeys(candidates, 0.0)
    rows: dict[str, list[dict]] = {k: [] for k in candidates}
    for s in images:
        plane = check_image_bytes(s.path.read_bytes())
        x = model_input(plane, lo.image_size, lo.intensity, lo.channels_last)
        with torch.inference_mode():
            k = int(model(x).argmax())
        mask = head_mask(np.array(resize_square(plane, lo.image_size)))
        for name, (method, layers, options) in candidates.items():
            pad = options.get("pad", 0)
            x_in = model_input(plane, lo.image_size, lo.intensity, lo.channels_last, pad)
            with torch.inference_mode():
                same = int(model(x_in).argmax()) == k
            t1 = time.perf_counter()
            call = {o: v for o, v in options.items() if o not in ("pad", "cut")}
            maps = cut_border(cam_maps(model, x_in, method, layers, call), pad)
            if "cut" in options:
                maps = cut_floor(maps, options["cut"])
            seconds[name] += time.perf_counter() - t1
            total = float(maps[k].sum())
            moved = [float(np.abs(maps[k] - maps[j]).mean()) for j in range(4) if j != k]
            rows[name].append(
                {
                    "file": s.path.name,
                    "inside": float((maps[k] * mask).sum() / total) if total > 0 else 0.0,
                    "area": float(mask.mean()),
                    "move": min(moved),
                    "same_class": same,
                }
            )
    summary = {
        name: {
            "method": candidates[name][0],
            "layers": list(candidates[name][1]),
            "options": candidates[name][2],
            "mass_inside_head_mean": round(float(np.mean([r["inside"] for r in rs])), 4),
            "images_with_80pct_inside": int(sum(r["inside"] >= 0.8 for r in rs)),
            "move_mean": round(float(np.mean([r["move"] for r in rs])), 4),
            "images_moving_over_0.03": int(sum(r["move"] > 0.03 for r in rs)),
            "images_same_class_as_unpadded": int(sum(r["same_class"] for r in rs)),
            "seconds_per_image_4_classes": round(seconds[name] / len(rs), 3),
        }
        for name, rs in rows.items()
    }
    report = {
        **report_head("gradcam_compare", __file__, argv, lo.device),
        "model": str(path),
        "split": split | {"images": len(images)},
        "head_area_mean": round(float(np.mean([r["area"] for r in next(iter(rows.values()))])), 4),
        "candidates": summary,
        "images": rows,
        "seconds": round(time.time() - t0, 1),
    }
    write_report(args.out, report)
    for name, v in summary.items():
        print(name, v)
    return report


if __name__ == "__main__":
    main()
