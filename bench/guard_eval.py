"""Measure the input guard of a model file: who gets through, who is refused, and why.

Sections (all by default, or --only a,b):
- test:       the official Testing split through the full path (file bytes -> load_plane ->
              auto_crop -> model -> OOD score): accept rate, accuracy, how many auto-cropped.
- perturbed:  every perturbation of bench/robustness.py applied to the decoded test planes:
              accept rate per perturbation and overall.
- ood:        the curated OOD set of bench/ood_set.py: reject rate per kind, with reasons.
- dicom:      pydicom's bundled files (MR accepted and decoded, other modalities refused) and
              DICOM copies of test images (12/16-bit, rescaled, MONOCHROME1, JPEG 2000): the
              class must equal the JPEG's.

    python bench/guard_eval.py [--model M] [--data DIR] [--only test,ood] [--limit N]
        [--out bench/results/guard_eval.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import torch
from ood_set import ood_items
from robustness import PERTURBATIONS, pick, report_head

from brainmri.data.folders import resolve_data_dir, scan_split
from brainmri.data.images import resize_square
from brainmri.data.quality import check_image_bytes
from brainmri.errors import BrainMRIError, RejectedInput
from brainmri.infer.core import load_for_inference
from brainmri.infer.dicom import plane_to_dicom
from brainmri.infer.guard import guard_features, load_guard
from brainmri.infer.inputs import auto_crop, check_scan_statistics, load_plane
from brainmri.model.checkpoint import shipped_model_path

SECTIONS = ("test", "perturbed", "ood", "dicom", "gradcam")


class Guarded:
    """A model file with its guard: planes -> (class, probability, OOD score, cropped)."""

    def __init__(self, path: Path):
        self.loaded = load_for_inference(path, "cpu")
        self.scorer, self.threshold = load_guard(path)
        if self.scorer is None or self.threshold is None:
            raise BrainMRIError(f"{path} holds no guard statistics: run bench/fit_guard.py")

    def planes(self, planes: list[np.ndarray], crop: str = "auto") -> dict[str, np.ndarray]:
        lo = self.loaded
        ready, cropped = [], []
        for g in planes:
            out, did = auto_crop(g, crop)
            ready.append(resize_square(np.ascontiguousarray(out), lo.image_size))
            cropped.append(did)
        if not ready:
            return {k: np.zeros(0) for k in ("pred", "prob", "score", "cropped")}
        x = torch.from_numpy(np.stack(ready)[:, None])
        feats, logits = guard_features(
            lo.model, x, lo.intensity, lo.channels_last, source=self.scorer.source
        )
        probs = torch.softmax(logits / lo.temperature, dim=1)
        return {
            "pred": probs.argmax(dim=1).numpy(),
            "prob": probs.max(dim=1).values.numpy(),
            "score": self.scorer(feats).numpy(),
            "cropped": np.array(cropped),
        }

    def files(self, items: list[tuple[str, bytes]]) -> list[dict]:
        """Full path for (name, bytes) items: status ok / rejected / error with a reason."""
        out: list[dict] = [{} for _ in items]
        planes, idx = [], []
        for i, (name, data) in enumerate(items):
            try:
                planes.append(load_plane(data, name))
                idx.append(i)
            except RejectedInput as exc:
                out[i] = {"status": "rejected", "reason": exc.code, "detail": str(exc)}
            except BrainMRIError as exc:
                out[i] = {"status": "error", "reason": "unreadable", "detail": str(exc)}
        res = self.planes(planes)
        for j, i in enumerate(idx):
            score = float(res["score"][j])
            rec = {
                "pred": int(res["pred"][j]),
                "prob": round(float(res["prob"][j]), 4),
                "score": round(score, 2),
                "cropped": bool(res["cropped"][j]),
            }
            if score > self.threshold:
                rec |= {"status": "rejected", "reason": "ood", "detail": f"score {score:.1f}"}
            else:
                rec |= {"status": "ok", "reason": None}
            out[i] = rec
        return out


def _scores(x: np.ndarray) -> dict[str, float]:
    q = np.percentile(x, [50, 95, 99, 100]) if len(x) else [np.nan] * 4
    return {k: round(float(v), 2) for k, v in zip(("median", "p95", "p99", "max"), q, strict=True)}


def eval_test(g: Guarded, test: list) -> dict:
    recs = g.files([(s.path.name, s.path.read_bytes()) for s in test])
    labels = np.array([s.label for s in test])
    ok = np.array([r["status"] == "ok" for r in recs])
    pred = np.array([r.get("pred", -1) for r in recs])
    # crop off differs from auto only where auto cropped: run the model on those again
    was_cropped = [i for i, r in enumerate(recs) if r.get("cropped")]
    off_pred = pred.copy()
    if was_cropped:
        items = [test[i] for i in was_cropped]
        off = g.planes([load_plane(s.path.read_bytes(), s.path.name) for s in items], crop="off")
        off_pred[was_cropped] = off["pred"]
    return {
        "n": len(test),
        "accepted": int(ok.sum()),
        "accept_rate": round(float(ok.mean()), 5),
        "rejected": [
            {"file": str(s.path.name), "class": s.class_name} | r
            for s, r in zip(test, recs, strict=True)
            if r["status"] != "ok"
        ],
        "auto_cropped": int(sum(r.get("cropped", False) for r in recs)),
        "accuracy_crop_auto": round(float((pred == labels).mean()), 5),
        "accuracy_crop_off": round(float((off_pred == labels).mean()), 5),
        "auto_cropped_files": [
            {
                "file": test[i].path.name,
                "class": test[i].class_name,
                "pred_auto": int(pred[i]),
                "pred_off": int(off_pred[i]),
            }
            for i in was_cropped
        ],  # fmt: skip
        "accuracy_of_accepted": round(float((pred[ok] == labels[ok]).mean()), 5),
        "scores": _scores(np.array([r["score"] for r in recs if "score" in r])),
    }


def _passes_statistics(plane: np.ndarray) -> bool:
    try:
        check_scan_statistics(plane)
    except RejectedInput:
        return False
    return True


def eval_perturbed(g: Guarded, test: list) -> dict:
    originals = [check_image_bytes(s.path.read_bytes()) for s in test]  # checked per copy
    labels = np.array([s.label for s in test])
    per, total, accepted = {}, 0, 0
    for p in PERTURBATIONS:
        if p.name == "clean":
            continue
        planes = [p.fn(gr, i) for i, gr in enumerate(originals)]
        passes = np.array([_passes_statistics(pl) for pl in planes])
        res = g.planes(planes)
        ok = (res["score"] <= g.threshold) & passes
        per[p.name] = {
            "accept_rate": round(float(ok.mean()), 5),
            "accepted": int(ok.sum()),
            "refused_by_image_statistics": int((~passes).sum()),
            "accuracy": round(float((res["pred"] == labels).mean()), 5),
            "scores": _scores(res["score"]),
        }
        total, accepted = total + len(ok), accepted + int(ok.sum())
        print(f"  perturbed {p.name}: {ok.mean():.4f} accepted", flush=True)
    return {"n": total, "accepted": accepted, "accept_rate": round(accepted / total, 5)} | {
        "per_perturbation": per
    }


def eval_ood(g: Guarded) -> dict:
    items = ood_items()
    recs = g.files([(it.file_name, it.data) for it in items])
    kinds: dict[str, dict] = {}
    for it, r in zip(items, recs, strict=True):
        k = kinds.setdefault(it.kind, {"n": 0, "rejected": 0, "reasons": Counter(), "items": []})
        k["n"] += 1
        k["rejected"] += r["status"] != "ok"
        k["reasons"][r["reason"] or "accepted"] += 1
        k["items"].append({"name": it.name} | r)
    for k in kinds.values():
        k["reject_rate"] = round(k["rejected"] / k["n"], 4)
        k["reasons"] = dict(k["reasons"])
    n = sum(k["n"] for k in kinds.values())
    rejected = sum(k["rejected"] for k in kinds.values())
    return {"n": n, "rejected": rejected, "kinds": kinds}


def eval_dicom(g: Guarded, test: list) -> dict:
    folder = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
    bundled = sorted(folder.glob("*.dcm"))
    recs = g.files([(f.name, f.read_bytes()) for f in bundled])
    files = {f.name: r for f, r in zip(bundled, recs, strict=True)}
    variants = {
        "12bit": {"bits": 12},
        "16bit_rescaled": {"bits": 16, "slope": 2, "intercept": -1024},
        "monochrome1": {"bits": 12, "monochrome1": True},
        "j2k_lossless": {"bits": 12, "transfer_syntax": pydicom.uid.JPEG2000Lossless},
    }
    jpeg = g.files([(s.path.name, s.path.read_bytes()) for s in test])
    planes = [(s, check_image_bytes(s.path.read_bytes())) for s in test]
    copies: dict[str, dict] = {}
    for name, kw in variants.items():
        items = [(s.path.stem + ".dcm", plane_to_dicom(plane, **kw)) for s, plane in planes]
        got = g.files(items)
        same = [a.get("pred") == b.get("pred") for a, b in zip(jpeg, got, strict=True)]
        copies[name] = {
            "n": len(test),
            "same_class_as_jpeg": int(sum(same)),
            "accepted": int(sum(r["status"] == "ok" for r in got)),
        }
    status = Counter(r["status"] for r in recs)
    return {"bundled": {"counts": dict(status), "files": files}, "benchmark_copies": copies}


def eval_gradcam(g: Guarded, test: list, method: str = "gradcam") -> dict:
    """Per test image: share of the predicted class's map inside the head mask (and the mask's
    share of the image), and how far the map moves for each other class (mean |difference|)."""
    from brainmri.infer.gradcam import head_mask, model_input, plane_maps

    lo, rows, seconds = g.loaded, [], 0.0
    for s in test:
        plane = check_image_bytes(s.path.read_bytes())  # explained whatever the guard says
        x = model_input(plane, lo.image_size, lo.intensity, lo.channels_last)
        t1 = time.perf_counter()
        maps = plane_maps(
            lo.model, plane, lo.image_size, [0, 1, 2, 3], lo.intensity, lo.channels_last, method
        )
        seconds += time.perf_counter() - t1
        with torch.inference_mode():
            k = int(lo.model(x).argmax())
        mask = head_mask(np.array(resize_square(plane, lo.image_size)))
        rows.append(
            {
                "file": s.path.name,
                "class": s.class_name,
                "pred": k,
                "mass_inside_head": round(float((maps[k] * mask).sum() / maps[k].sum()), 4),
                "head_area": round(float(mask.mean()), 4),
                "move_min": round(
                    min(float(np.abs(maps[k] - maps[j]).mean()) for j in range(4) if j != k), 4
                ),  # fmt: skip
            }
        )
    inside = np.array([r["mass_inside_head"] for r in rows])
    return {
        "method": method,
        "n": len(rows),
        "seconds_per_image_4_classes": round(seconds / max(1, len(rows)), 3),
        "mass_inside_head_mean": round(float(inside.mean()), 4),
        "mass_inside_head_median": round(float(np.median(inside)), 4),
        "images_with_80pct_inside": int((inside >= 0.8).sum()),
        "head_area_mean": round(float(np.mean([r["head_area"] for r in rows])), 4),
        "move_min_mean": round(float(np.mean([r["move_min"] for r in rows])), 4),
        "images": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--only", default=",".join(SECTIONS))
    ap.add_argument("--limit", type=int, default=None, help="test images (round robin)")
    ap.add_argument("--dicom-limit", type=int, default=48, help="test images copied as DICOM")
    ap.add_argument("--perturbed-limit", type=int, default=None, help="test images perturbed")
    ap.add_argument("--gradcam-limit", type=int, default=48, help="test images explained")
    ap.add_argument("--method", default="gradcam", help="explain's map: gradcam or occlusion")
    ap.add_argument("--out", type=Path, default=Path("bench/results/guard_eval.json"))
    args = ap.parse_args(argv)
    sections = args.only.split(",")
    if unknown := sorted(set(sections) - set(SECTIONS)):
        raise SystemExit(f"unknown sections {unknown}: choose from {SECTIONS}")
    path = args.model or shipped_model_path()
    torch.set_grad_enabled(False)
    g = Guarded(path)
    data_dir = resolve_data_dir(args.data)
    test = pick(scan_split(data_dir, "Testing"), args.limit)
    report: dict = {
        **report_head("guard_eval", __file__, argv, g.loaded.device),
        "model": str(path),
        "n_test": len(test),
    }
    t0 = time.time()
    if "test" in sections:
        report["test"] = eval_test(g, test)
        print(f"test: {report['test']['accept_rate']:.4f} accepted", flush=True)
    if "perturbed" in sections:
        report["perturbed"] = eval_perturbed(g, pick(test, args.perturbed_limit))
    if "ood" in sections:
        report["ood"] = eval_ood(g)
        for kind, k in report["ood"]["kinds"].items():
            print(f"  ood {kind:<18} {k['rejected']}/{k['n']} rejected  {k['reasons']}")
    if "dicom" in sections:
        report["dicom"] = eval_dicom(g, pick(test, args.dicom_limit))
        print(f"  dicom: {report['dicom']['bundled']['counts']}", flush=True)
    if "gradcam" in sections:
        torch.set_grad_enabled(True)
        report["gradcam"] = eval_gradcam(g, pick(test, args.gradcam_limit), args.method)
        print(f"  gradcam: {report['gradcam']['mass_inside_head_mean']} of the mass inside")
    report["threshold"] = g.threshold
    report["seconds"] = round(time.time() - t0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
