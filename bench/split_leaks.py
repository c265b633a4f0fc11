"""Leaks of the validation split, old (per-image stratified) vs new (grouped), for every path.

A split path is how a run's train/validation split comes to be:
- `train` on the uncleaned benchmark (how the shipped members were trained): the split is
  drawn by `train` from Training/ (old: `folders.stratified_split`, new: `splits.grouped_split`);
- `brainmri clean --policy P` then `train` on the cleaned folder (P = keep-one, drop-from-train,
  report): the split written by clean (old: `stratified_split` of the kept Training images, as
  clean wrote it before; new: the grouped split clean writes now).
For each, the validation images with a copy among that split's training images: byte-identical,
and exact or near (24×24 thumbnail correlation) above 0.995 and above 0.98, measured on the
files as `train` reads them. Seed 42, val_fraction 0.15 (the defaults of clean and the `cpu`
recipe's split).

    python bench/split_leaks.py --json bench/results/split_leaks.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from brainmri.data.clean import CleanOptions, run_clean
from brainmri.data.dedupe import Features, compute_features
from brainmri.data.folders import Sample, resolve_data_dir, scan_split, stratified_split
from brainmri.data.splits import grouped_split, leak_counts, read_split

SEED, FRACTION = 42, 0.15


def counts(train: list[Sample], val: list[Sample], feats: dict[str, Features]) -> dict:
    return leak_counts([feats[str(s.path)] for s in train], [feats[str(s.path)] for s in val])


def features_of(samples: list[Sample], workers: int | None) -> dict[str, Features]:
    feats = compute_features([s.path for s in samples], workers)
    return {str(s.path): f for s, f in zip(samples, feats, strict=True)}


def measure_path(samples: list[Sample], new_split, workers: int | None) -> dict:
    feats = features_of(samples, workers)
    old_tr, old_va = stratified_split(samples, FRACTION, SEED)
    new_tr, new_va, info = new_split(feats)
    return {
        "n_training": len(samples),
        "old": counts(old_tr, old_va, feats),
        "new": counts(new_tr, new_va, feats),
        "new_split": info.to_dict(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=Path("/tmp/split_leaks"))
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--json", type=Path, default=Path("bench/results/split_leaks.json"))
    args = ap.parse_args(argv)
    data = resolve_data_dir(args.data)
    t0 = time.time()
    paths: dict[str, dict] = {}
    training = scan_split(data, "Training")

    def drawn_by_train(feats: dict[str, Features]):
        return grouped_split(
            training, FRACTION, SEED, features=[feats[str(s.path)] for s in training]
        )

    paths["train on the uncleaned benchmark"] = measure_path(training, drawn_by_train, args.workers)
    print(json.dumps(paths, indent=1), flush=True)
    for policy in ("keep-one", "drop-from-train", "report"):
        out = args.work / policy
        opts = CleanOptions(policy=policy, val_fraction=FRACTION, seed=SEED, progress=False)
        opts.workers = args.workers
        run_clean(data, out, opts)
        kept = [Sample(s.path, s.label, s.split) for s in scan_split(out, "Training")]
        tr, va, info = read_split(out / "splits", out)
        written = (tr, va, info)
        paths[f"clean --policy {policy}"] = measure_path(
            kept, lambda _f, w=written: w, args.workers
        )
        print(policy, json.dumps(paths[f"clean --policy {policy}"]), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    result = {
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": commit.stdout.strip(),
        "machine": "2-core CPU (AMD EPYC), 24 GiB, no GPU",
        "seed": SEED,
        "val_fraction": FRACTION,
        "definition": "validation images with a copy among the split's training images: "
        "'exact' byte-identical; 'near_T' exact or thumbnail correlation > T",
        "paths": paths,
        "wall_s": round(time.time() - t0, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
