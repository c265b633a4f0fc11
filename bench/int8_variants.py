"""int8 variants of the shipped model's ONNX graph against fp32, on the validation split only.

Each variant is an ONNX Runtime static QDQ quantization of the same fp32 export, calibrated on
256 images of the model's own training split (seeded draw; never validation or test images).
On the model's validation split (its own grouped split, rebuilt from the model file) it counts
the files whose outcome differs from fp32 (refused by the OOD score, or the class), the right
answers, and the model-only speed at batch 32 (best of 3 rounds). docs/RESULTS.md §17.2 holds
the rule that picks one; this script picks nothing itself.

    python bench/int8_variants.py --out bench/results/int8_variants.json
    python bench/int8_variants.py --round 2 --out bench/results/int8_variants2.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from inference import rate
from robustness import machine

from brainmri.data.cache import decode_images
from brainmri.data.folders import resolve_data_dir
from brainmri.data.transforms import normalize_planes
from brainmri.infer.core import Classifier
from brainmri.infer.export import export_onnx
from brainmri.model.checkpoint import read_metadata, shipped_model_path
from brainmri.train.data import model_split

VARIANTS: dict[str, dict] = {
    "Q0_all_7bit_minmax": {},
    "Q1_conv_7bit_minmax": {"op_types": ["Conv"]},
    "Q2_conv_8bit_minmax": {"op_types": ["Conv"], "reduce_range": False},
    "Q3_conv_7bit_percentile": {"op_types": ["Conv"], "method": "percentile"},
}
"""Q0 is `brainmri export --int8` as it is; the others quantize the convolutions only (the head's
Dense layers and the guard's distances stay fp32), with 8-bit weights (this CPU has VNNI, so no
u8s8 saturation) or percentile calibration."""

SECOND_ROUND: dict[str, dict] = {
    "Q0_all_7bit_minmax": {},
    "Q4_all_but_guard_7bit_minmax": {"guard_fp32": True},
}
"""§17.8 (`--round 2`): Q0 again, and Q0 with the nodes only `ood_score` depends on in fp32."""


def outcomes(clf: Classifier, planes: torch.Tensor) -> np.ndarray:
    """Per file: -1 when the OOD score refuses it, else the predicted class."""
    out = clf.run(planes)
    pred = out["probs"].argmax(1)
    thr = clf.ood_threshold
    if out["ood_score"] is not None and thr is not None:
        pred = np.where(out["ood_score"] > thr, -1, pred)
    return pred


def batch32_rate(clf: Classifier, size: int, rounds: int = 3, seconds: float = 3.0) -> float:
    """Best-of-rounds img/s of the backend alone at batch 32 (bench/inference.py's timer)."""
    x = torch.rand(32, 1, size, size)
    return max(rate(lambda: clf.backend(x), 32, seconds) for _ in range(rounds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--calibration", type=int, default=256)
    ap.add_argument("--round", type=int, choices=(1, 2), default=1,
                    help="1: §17.2's variants; 2: §17.8's (the guard's nodes in fp32)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "brainmri-int8")
    ap.add_argument("--out", type=Path, default=Path("bench/results/int8_variants.json"))
    args = ap.parse_args()
    t_start = time.perf_counter()
    model = args.model or shipped_model_path()
    data = resolve_data_dir(args.data)
    meta = read_metadata(model)
    size = int(meta["preprocessing"]["image_size"])
    train, val, split = model_split(data, meta)
    pick = np.random.default_rng(0).permutation(len(train))[: args.calibration]
    calib = decode_images([train[i].path for i in sorted(pick)], size, desc="calibration")
    calibration = normalize_planes(calib, meta["preprocessing"].get("intensity", "none")).numpy()
    planes = decode_images([s.path for s in val], size, desc="validation")
    labels = np.array([s.label for s in val])

    args.work.mkdir(parents=True, exist_ok=True)
    fp32_path = args.work / "fp32.onnx"
    export_onnx(model, fp32_path)
    fp32 = Classifier(fp32_path, "onnx")
    ref = outcomes(fp32, planes)
    result: dict = {"fp32": {"right": int((ref == labels).sum()), "refused": int((ref < 0).sum()),
                             "batch32_img_per_s": batch32_rate(fp32, size)}}  # fmt: skip
    for name, options in (VARIANTS if args.round == 1 else SECOND_ROUND).items():
        path = args.work / f"{name}.onnx"
        t0 = time.perf_counter()
        export_onnx(model, path, int8=True, calibration=calibration, int8_options=options)
        clf = Classifier(path, "onnx")
        got = outcomes(clf, planes)
        result[name] = {
            "options": options,
            "quantize_s": round(time.perf_counter() - t0, 1),
            "outcome_differs_from_fp32": int((got != ref).sum()),
            "right": int((got == labels).sum()),
            "refused": int((got < 0).sum()),
            "batch32_img_per_s": batch32_rate(clf, size),
        }
        print(name, json.dumps(result[name]), flush=True)
    report = {
        "benchmark": "int8_variants",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": machine(torch.device("cpu")),
        "model": str(model),
        "split": {**split, "val": len(val), "calibration_from_train": len(calib)},
        "variants": result,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
