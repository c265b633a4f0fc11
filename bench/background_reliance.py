"""Does the model need what lies outside the head? Validation images with everything outside
the head mask set to black, against the images as they are.

For the shipped model's grouped validation split (never the test split): accuracy and the
share of unchanged predictions when the outside of the head (infer/gradcam.head_mask: the
largest bright region, holes filled) is blacked out, and, for contrast, when the inside is
(the head replaced by black, only the background and the image edges left). The Grad-CAM maps
of §16 put about a third of their mass outside the head; this says whether the model's
answers depend on that part of the image. No choice is made from it.

    python bench/background_reliance.py [--model M] \
        [--out bench/results/shipped/background_reliance.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from robustness import model_and_split, model_data_args, report_head, write_report

from brainmri.data.cache import cache_samples
from brainmri.infer.gradcam import head_mask


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_data_args(ap)
    ap.add_argument(
        "--out", type=Path, default=Path("bench/results/shipped/background_reliance.json")
    )
    args = ap.parse_args(argv)
    path, lo, _, val, split = model_and_split(args)
    planes, labels = cache_samples(val, lo.image_size, "val")
    masks = torch.from_numpy(np.stack([head_mask(p[0].numpy()) for p in planes]))[:, None]
    variants = {
        "as is": planes,
        "outside the head black": planes * masks,
        "head black (only outside left)": planes * ~masks,
    }
    y = labels.numpy()
    preds = {name: lo.probs(v).argmax(dim=1).numpy() for name, v in variants.items()}
    base = preds["as is"]
    rows = {
        name: {
            "accuracy": round(float((p == y).mean()), 4),
            "same_prediction_as_is": round(float((p == base).mean()), 4),
            "errors": int((p != y).sum()),
        }
        for name, p in preds.items()
    }
    report = {
        **report_head("background_reliance", __file__, argv, lo.device),
        "model": str(path),
        "split": split | {"val": len(val)},
        "head_area_mean": round(float(masks.float().mean()), 4),
        "variants": rows,
    }
    write_report(args.out, report)
    print(json.dumps(report["variants"], indent=1), "head area", report["head_area_mean"])
    return report


if __name__ == "__main__":
    main()
