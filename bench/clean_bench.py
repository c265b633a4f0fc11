"""Measure `brainmri clean` on a data folder and write a JSON summary.

    .venv/bin/python bench/clean_bench.py --data ../shared/data/brain-tumor-mri \
        --json bench/results/clean_benchmark.json

Runs run_clean into a temporary folder under /tmp (removed afterwards unless --keep), then
(unless --no-analyze) re-reads the input's thumbnails to measure:
- test images with a Training image above 0.995 and 0.98 (the data README's 484 / 718),
- near-pair precision proxies at the threshold: label agreement, and agreement of an
  independent full-resolution check (correlation of the two luminance planes >= 0.98),
- near-dup recall on synthetic copies: one file of every exact group (or a sample) re-encoded
  at JPEG quality 70 and resized, then at quality 50 and half size; recall = share whose
  thumbnail correlation with the original is above the threshold.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from brainmri.data.clean import CleanOptions, format_summary, run_clean
from brainmri.data.dedupe import compute_features, near_pairs, stack_vectors, thumbnail_vector
from brainmri.data.folders import SPLITS, scan_dataset
from brainmri.data.images import load_gray


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": Image.__version__,
    }


def reencoded_vector(path: Path, quality: int, scale: float) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        im = im.resize((max(8, round(w * scale)), max(8, round(h * scale))), Image.BICUBIC)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
    return thumbnail_vector(load_gray(io.BytesIO(buf.getvalue())))


def share(n: int, d: int) -> float | None:
    return round(n / d, 5) if d else None


def full_res_corr(a: Path, b: Path) -> float:
    x = load_gray(a).astype(np.float64)
    y = load_gray(b).astype(np.float64)
    if x.shape != y.shape:
        y = cv2.resize(y, x.shape[::-1], interpolation=cv2.INTER_AREA)
    return float(np.corrcoef(x.ravel(), y.ravel())[0, 1])


def analyze(data: Path, report: dict, threshold: float, workers: int | None, n_recall: int):
    t0 = time.perf_counter()
    scanned = scan_dataset(data, all_files=True)
    bad = {q["path"] for q in report["quarantined"]}
    samples = [
        s
        for split in SPLITS
        for s in scanned[split]
        if s.path.relative_to(data).as_posix() not in bad
    ]
    feats = compute_features([s.path for s in samples], workers=workers, progress=True)
    X = stack_vectors(f.vector for f in feats)
    tr = [i for i, s in enumerate(samples) if s.split == "Training"]
    te = [i for i, s in enumerate(samples) if s.split == "Testing"]
    out: dict = {}
    if te and tr:
        train_hashes = {feats[j].sha256 for j in tr}
        exact_hit = {i for i in range(len(te)) if feats[te[i]].sha256 in train_hashes}
        for thr in (0.995, 0.98):
            pairs = near_pairs(X[te], X[tr], thr)
            hit = {i for i, _, _ in pairs}
            same = sum(1 for i, j, _ in pairs if samples[te[i]].label == samples[tr[j]].label)
            out[f"test_with_train_corr_gt_{thr}"] = {
                "count": len(hit),
                "count_with_exact_copies_added": len(hit | exact_hit),
                "exact_copies_not_above_threshold": len(exact_hit - hit),
                "pairs": len(pairs),
                "same_label_share": share(same, len(pairs)),
            }
    # precision proxies over all near pairs at the threshold (both splits together)
    pairs = near_pairs(X, None, threshold)
    non_exact = [(i, j, c) for i, j, c in pairs if feats[i].sha256 != feats[j].sha256]
    full = [full_res_corr(samples[i].path, samples[j].path) for i, j, _ in non_exact]
    same_all = sum(1 for i, j, _ in pairs if samples[i].label == samples[j].label)
    same_ne = sum(1 for i, j, _ in non_exact if samples[i].label == samples[j].label)
    out["near_pairs_at_threshold"] = {
        "threshold": threshold,
        "pairs": len(pairs),
        "byte_identical": len(pairs) - len(non_exact),
        "non_exact": len(non_exact),
        "label_agreement_all": share(same_all, len(pairs)),
        "label_agreement_non_exact": share(same_ne, len(non_exact)),
        "non_exact_full_res_corr_ge_0.98_share": share(sum(c >= 0.98 for c in full), len(full)),
        "non_exact_full_res_corr_min": round(min(full), 5) if full else None,
        "non_exact_full_res_corr_median": round(float(np.median(full)), 5) if full else None,
    }
    # recall on synthetic re-encoded copies
    groups = report["exact_groups"]
    if groups:
        originals = [data / g["files"][0] for g in groups][:n_recall]
        source = "first file of each exact duplicate group"
    else:
        step = max(1, len(samples) // n_recall)
        originals = [s.path for s in samples[::step]][:n_recall]
        source = f"every {step}th valid image"
    idx = {s.path: i for i, s in enumerate(samples)}
    recall = {"source": source, "n": len(originals), "threshold": threshold}
    for name, q, scale in (("q70_resize0.8", 70, 0.8), ("q50_resize0.5", 50, 0.5)):
        corrs = [
            float(X[idx[p]] @ reencoded_vector(p, q, scale)) if p in idx else float("nan")
            for p in originals
        ]
        recall[name] = {
            "recall": share(sum(c > threshold for c in corrs), len(corrs)),
            "min_corr": round(float(np.nanmin(corrs)), 5) if corrs else None,
        }
    out["synthetic_recall"] = recall
    out["analysis_s"] = round(time.perf_counter() - t0, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a /tmp dir)")
    ap.add_argument("--json", type=Path, required=True, help="where to write the summary JSON")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--policy", default="keep-one")
    ap.add_argument("--near-threshold", type=float, default=0.995)
    ap.add_argument("--recall-n", type=int, default=300)
    ap.add_argument("--no-analyze", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the output folder")
    args = ap.parse_args(argv)

    out = args.out or Path(tempfile.mkdtemp(prefix="brainmri_clean_bench_")) / "out"
    opts = CleanOptions(
        policy=args.policy, near_threshold=args.near_threshold, workers=args.workers
    )
    report = run_clean(args.data, out, opts)
    print(format_summary(report))
    st, t = report["stats"], report["timings"]
    summary = {
        "benchmark": "brainmri clean",
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "machine": machine(),
        "input": report["input"],
        "options": report["options"],
        "images": t["images"],
        "wall_s": t["wall_s"],
        "images_per_s": t["images_per_s"],
        "timings": t,
        "counts": report["counts"],
        "quarantined": len(report["quarantined"]),
        "quarantine_reasons": sorted({q["reason"] for q in report["quarantined"]}),
        "dropped": len(report["dropped"]),
        "crop_fallbacks": report["crop"]["fallback_count"],
        "exact_groups": st["exact_groups"],
        "exact_files": st["exact_files"],
        "exact_groups_cross_split": st["exact_groups_cross_split"],
        "near_groups": st["near_groups"],
        "near_files": st["near_files"],
        "near_pairs": st["near_pairs"],
        "near_pairs_non_exact": st["near_pairs_non_exact"],
        "conflicting_label_groups": st["conflicting_label_groups"],
        "cross_split_leak_pairs": st["leak_pairs"],
        "test_with_exact_copy_in_train": st["test_with_exact_copy_in_train"],
        "test_with_exact_or_near_copy_in_train": st["test_with_exact_or_near_copy_in_train"],
        "leak_free_test": report["leak_free_test"]["count"],
        "test_written": report["leak_free_test"]["of_test_written"],
    }
    if not args.no_analyze:
        summary["analysis"] = analyze(
            args.data, report, args.near_threshold, args.workers, args.recall_n
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "counts"}, indent=2))
    if args.out is None and not args.keep:
        shutil.rmtree(out.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
