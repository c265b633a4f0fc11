"""`brainmri clean`: validate, quarantine, dedupe, crop and resize a raw folder into a clean copy.

One pass over the files, in worker processes: read the bytes once (sha256), check the header
(format, mode, frames, size), decode fully (PIL load, via data/images.py so every file is
reduced to luminance the same way), make the 24x24 dedupe thumbnail, crop to the brain, resize,
replicate to 3 channels and write a quality-95 JPEG. Then, in the main process: exact and near
duplicate groups, Training/Testing leaks, the duplicate policy (outputs of dropped files are
removed), the leak-free test list, the grouped train/val split (data/splits.py: no copy of
a validation image in train) and the JSON report.

Never writes into the input folder; the output folder is rebuilt from scratch on every run, so
two runs give byte-identical images and lists.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from brainmri import CLASS_NAMES, __version__
from brainmri.data.crop import CropBox, crop_to_brain
from brainmri.data.dedupe import (
    THUMB_SIDE,
    UnionFind,
    exact_groups,
    near_pairs,
    sha256_bytes,
    stack_vectors,
    thumbnail_vector,
)
from brainmri.data.folders import (
    SPLITS,
    Sample,
    scan_dataset,
    write_file_list,
)
from brainmri.data.images import resize_square, to_rgb
from brainmri.data.quality import MIN_SIDE, check_plane
from brainmri.data.quality import bad as _bad
from brainmri.data.quality import check_header as _check_header
from brainmri.data.quality import decode as _decode
from brainmri.data.splits import folds_for, grouped_split, write_split
from brainmri.errors import BrainMRIError

POLICIES = ("keep-one", "drop-from-train", "report")
JPEG_QUALITY = 95
MARKER = ".brainmri-clean"
REPORT_NAME = "clean_report.json"
LEAK_FREE_NAME = "leak_free_test.txt"
MANAGED = ("Training", "Testing", "splits", "quarantine", REPORT_NAME, LEAK_FREE_NAME)


@dataclass
class CleanOptions:
    """Options of `brainmri clean` (the CLI flags, same names)."""

    size: int = 224
    near_threshold: float = 0.995
    policy: str = "keep-one"
    crop: bool = True
    margin: float = 0.02
    max_pixels: int = 40_000_000
    val_fraction: float = 0.15
    seed: int = 42
    workers: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise BrainMRIError(
                f"unknown duplicate policy {self.policy!r} (choose one of {', '.join(POLICIES)})"
            )
        if self.size < 8:
            raise BrainMRIError(f"size must be at least 8 pixels, got {self.size}")
        if not 0.0 < self.near_threshold <= 1.0:
            raise BrainMRIError(f"near_threshold must be in (0, 1], got {self.near_threshold}")
        if not 0.0 <= self.margin < 1.0:
            raise BrainMRIError(f"margin must be in [0, 1), got {self.margin}")
        if self.max_pixels < MIN_SIDE * MIN_SIDE:
            raise BrainMRIError(f"max_pixels must be at least {MIN_SIDE * MIN_SIDE}")
        folds_for(self.val_fraction)  # (0, 0.5]: train needs a validation split
        if self.workers is not None and self.workers < 1:
            raise BrainMRIError(f"workers must be >= 1, got {self.workers}")


# ---------------------------------------------------------------- one file (worker process)


@dataclass(frozen=True)
class _Job:
    index: int
    src: str
    dst: str
    quarantine: str
    size: int
    crop: bool
    margin: float
    max_pixels: int


def process_file(job: _Job) -> dict[str, Any]:
    """Validate, hash, thumbnail, crop, resize and write one file; never raises for bad input."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning, odd EXIF: judged below
        res = _process(job)
    res["index"] = job.index
    if not res["ok"] and job.quarantine:
        q = Path(job.quarantine)
        q.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(job.src, q)
        except OSError:
            pass
    return res


def _process(job: _Job) -> dict[str, Any]:
    try:
        data = Path(job.src).read_bytes()
    except OSError as exc:
        return _bad("unreadable", f"{type(exc).__name__}: {exc}")
    if not data:
        return _bad("zero-byte", "empty file")
    sha = sha256_bytes(data)
    bad, info = _check_header(data, job.max_pixels)
    if bad is not None:
        bad["sha256"] = sha
        return bad | {"info": info}
    gray, bad = _decode(data)
    if bad is not None or gray is None:
        return (bad or _bad("corrupt")) | {"sha256": sha, "info": info}
    blank = check_plane(gray)  # tiny was judged on the header; here: a single grey level
    if blank is not None:
        return blank | {"sha256": sha, "info": info}
    vector = thumbnail_vector(gray)
    if job.crop:
        cropped, box = crop_to_brain(gray, job.margin)
    else:
        h, w = gray.shape
        cropped, box = gray, CropBox(0, 0, w, h)
    rgb = to_rgb(resize_square(cropped, job.size))
    dst = Path(job.dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb, "RGB").save(dst, "JPEG", quality=JPEG_QUALITY)
    return {
        "ok": True,
        "sha256": sha,
        "vector": vector,
        "info": info,
        "box": box.as_list(),
        "fallback": box.fallback,
        "fallback_reason": box.reason,
    }


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already


# ---------------------------------------------------------------- paths and output folder


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_paths(data: Path, out: Path) -> tuple[Path, Path]:
    data_r, out_r = data.resolve(), out.resolve()
    if _is_within(out_r, data_r):
        raise BrainMRIError(
            f"--out {out} is inside (or equal to) the input folder {data}: clean never writes "
            "into the input; pick an output folder outside it"
        )
    for name in MANAGED:
        if _is_within(data_r, (out_r / name).resolve()):
            raise BrainMRIError(
                f"the input folder {data} is inside {out / name}, which clean rebuilds: "
                "pick another --out"
            )
    return data_r, out_r


def _prepare_out(out: Path) -> int:
    """Create OUT, or clear the outputs of an earlier clean run there (never anything else);
    the number of files removed, which the summary reports (files a user put in those folders
    go with them)."""
    if out.exists() and not out.is_dir():
        raise BrainMRIError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise BrainMRIError(
            f"--out {out} is not empty and was not written by `brainmri clean`: "
            "pick a new folder or empty it"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by brainmri clean; rebuilt on every run\n")
    removed = 0
    for name in MANAGED:
        p = out / name
        if p.is_symlink() or p.is_file():
            p.unlink()
            removed += 1
        elif p.is_dir():
            removed += sum(1 for f in p.rglob("*") if not f.is_dir())
            shutil.rmtree(p)
    return removed


def _output_names(samples: list[Sample]) -> list[str]:
    """OUT-relative output path of each sample: <Split>/<class>/<stem>.jpg, made unique."""
    used: set[str] = set()
    names = []
    for s in samples:
        folder = f"{s.split}/{s.class_name}"
        rel = f"{folder}/{s.path.stem}.jpg"
        if rel in used:  # x.png beside x.jpg: keep both, deterministically
            base = f"{folder}/{s.path.stem}_{s.path.suffix.lstrip('.').lower()}"
            rel, k = f"{base}.jpg", 2
            while rel in used:
                rel, k = f"{base}_{k}.jpg", k + 1
        used.add(rel)
        names.append(rel)
    return names


# ---------------------------------------------------------------- the run


def _counts(samples: list[Sample], keep: set[int] | None = None) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        c = Counter(
            s.class_name
            for i, s in enumerate(samples)
            if s.split == split and (keep is None or i in keep)
        )
        row = {name: c.get(name, 0) for name in CLASS_NAMES}
        row["total"] = sum(row.values())
        out[split] = row
    return out


def _run_jobs(jobs: list[_Job], workers: int, progress: bool) -> list[dict[str, Any]]:
    from tqdm import tqdm

    off = None if progress else True  # None: a bar only on a terminal
    bar = dict(total=len(jobs), desc="clean: decode", unit="img", disable=off)
    if workers <= 1:
        return [process_file(j) for j in tqdm(jobs, **bar)]
    import multiprocessing as mp

    chunk = max(1, min(32, len(jobs) // (workers * 8) or 1))
    with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        return list(tqdm(pool.imap(process_file, jobs, chunksize=chunk), **bar))


def run_clean(data: Path, out: Path, options: CleanOptions) -> dict:
    """Clean `data` (Kaggle layout) into `out`; write and return the report (see module doc)."""
    t = {"start": time.perf_counter()}
    data, out = Path(data), Path(out)
    if not isinstance(options, CleanOptions):
        raise BrainMRIError("options must be a CleanOptions")
    options.__post_init__()  # re-validate: fields may have been changed after construction
    data_r, out_r = _check_paths(data, out)
    scanned = scan_dataset(data, all_files=True)
    samples = [s for split in SPLITS for s in scanned[split]]
    rel_in = [s.path.relative_to(data).as_posix() for s in samples]
    rel_out = _output_names(samples)
    replaced = _prepare_out(out)
    t["scan"] = time.perf_counter()

    workers = max(1, min(options.workers or os.cpu_count() or 1, len(samples)))
    results = _run_jobs(_jobs(samples, rel_out, out, options), workers, options.progress)
    results.sort(key=lambda r: r["index"])
    t["decode"] = time.perf_counter()

    valid = [i for i, r in enumerate(results) if r["ok"]]
    dd = _dedupe(samples, rel_in, results, valid, options)
    t["dedupe"] = time.perf_counter()

    dropped: dict[int, dict[str, Any]] = dd["dropped"]
    for i in sorted(dropped):
        (out / rel_out[i]).unlink(missing_ok=True)
    kept = [i for i in valid if i not in dropped]
    written = {i: Sample(out / rel_out[i], samples[i].label, samples[i].split) for i in kept}
    leak_free = [
        s for i, s in written.items() if s.split == "Testing" and i not in dd["leaked_test"]
    ]
    write_file_list(out / LEAK_FREE_NAME, leak_free, out)
    split = _write_split(out, [s for s in written.values() if s.split == "Training"], options)
    t["end"] = time.perf_counter()

    report: dict[str, Any] = {
        "tool": f"brainmri {__version__} clean",
        "input": str(data_r),
        "output": str(out_r),
        "options": asdict(options),
        "counts": {
            "before": _counts(samples),
            "quarantined": _counts(samples, {i for i, r in enumerate(results) if not r["ok"]}),
            "dropped": _counts(samples, set(dropped)),
            "after": _counts(samples, set(kept)),
        },
        "quarantined": [
            {"path": rel_in[i], "split": samples[i].split, "class": samples[i].class_name,
             "reason": r["reason"], "detail": r["detail"]}
            for i, r in enumerate(results)
            if not r["ok"]
        ],  # fmt: skip
        "dropped": [
            {"path": rel_in[i], **dropped[i]} for i in sorted(dropped)  # nothing written
        ],
        **{k: dd[k] for k in ("exact_groups", "near_groups", "leak_pairs", "stats")},
        "conflicting_label_groups": dd["conflicting"],
        "crop": _crop_report(results, kept, rel_in, options),
        "leak_free_test": {
            "file": LEAK_FREE_NAME,
            "count": len(leak_free),
            "of_test_written": sum(1 for s in written.values() if s.split == "Testing"),
            "definition": "Testing images as written with no exact or near copy in the "
            "original (pre-drop) Training images",
        },
        "splits": split,
        "replaced_files": replaced,
        "timings": _timings(t, len(samples), workers),
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _jobs(
    samples: list[Sample], rel_out: list[str], out: Path, options: CleanOptions
) -> list[_Job]:
    return [
        _Job(
            index=i,
            src=str(s.path),
            dst=str(out / rel_out[i]),
            quarantine=str(out / "quarantine" / s.split / s.class_name / s.path.name),
            size=options.size,
            crop=options.crop,
            margin=options.margin,
            max_pixels=options.max_pixels,
        )
        for i, s in enumerate(samples)
    ]


def _write_split(out: Path, train_kept: list[Sample], options: CleanOptions) -> dict[str, Any]:
    """The grouped, leak-free train/val split of the written Training images (data/splits.py).

    Groups are the duplicate components of the images as written (what `train` reads), at the
    split threshold whatever the policy's own threshold, so no validation image has a copy in
    train.
    """
    out_split = {"train": "splits/train.txt", "val": "splits/val.txt", "info": "splits/split.json"}
    try:
        if not train_kept:
            raise BrainMRIError("no Training images were written")
        tr, va, info = grouped_split(
            train_kept, options.val_fraction, options.seed, workers=options.workers
        )
    except BrainMRIError as exc:  # too few images: the clean copy is still good, no split
        return {"train_count": 0, "val_count": 0, "not_written": str(exc)}
    write_split(out / "splits", tr, va, info, out)
    return out_split | {"train_count": len(tr), "val_count": len(va), **info.to_dict()}


def _crop_report(
    results: list[dict[str, Any]], kept: list[int], rel_in: list[str], options: CleanOptions
) -> dict[str, Any]:
    fallbacks = [
        {"path": rel_in[i], "reason": results[i]["fallback_reason"]}
        for i in kept
        if results[i]["fallback"]
    ]
    return {"enabled": options.crop, "fallback_count": len(fallbacks), "fallbacks": fallbacks}


def _timings(t: dict[str, float], images: int, workers: int) -> dict[str, Any]:
    wall = t["end"] - t["start"]
    return {
        "wall_s": round(wall, 3),
        "scan_s": round(t["scan"] - t["start"], 3),
        "decode_write_s": round(t["decode"] - t["scan"], 3),
        "dedupe_s": round(t["dedupe"] - t["decode"], 3),
        "finish_s": round(t["end"] - t["dedupe"], 3),
        "images": images,
        "images_per_s": round(images / wall, 2) if wall > 0 else None,
        "workers": workers,
        "python": platform.python_version(),
    }


@dataclass
class _DupGraph:
    """Exact/near copy graph over the valid files (local indices 0..n-1; `valid` maps back)."""

    valid: list[int]
    names: list[str]  # input-relative path per local index
    hashes: list[str]
    X: np.ndarray
    split_of: list[str]
    label_of: list[int]
    ex_groups: list[list[int]]
    near: list[tuple[int, int, float]]
    edges: dict[tuple[int, int], tuple[str, float]]
    cross: dict[tuple[int, int], tuple[str, float]]  # (test, train) -> (kind, correlation)
    uf_all: UnionFind
    uf_split: UnionFind

    def kind(self, a: int, b: int, c: float) -> tuple[str, float]:
        return ("exact", 1.0) if self.hashes[a] == self.hashes[b] else ("near", c)

    def files(self, group: list[int]) -> list[str]:
        return [self.names[k] for k in group]

    def classes(self, group: list[int]) -> list[str]:
        return [CLASS_NAMES[self.label_of[k]] for k in group]


def _graph(
    samples: list[Sample], rel: list[str], results: list[dict[str, Any]], valid: list[int],
    threshold: float,
) -> _DupGraph:  # fmt: skip
    """Exact groups, near pairs, their edges, the cross-split pairs and the components."""
    n = len(valid)
    hashes = [results[g]["sha256"] for g in valid]
    X = stack_vectors(results[g]["vector"] for g in valid) if n else np.zeros(
        (0, THUMB_SIDE**2), np.float32)  # fmt: skip
    split_of = [samples[g].split for g in valid]
    ex_groups = exact_groups(hashes)
    near = near_pairs(X, None, threshold)
    g = _DupGraph(
        valid, [rel[v] for v in valid], hashes, X, split_of, [samples[v].label for v in valid],
        ex_groups, near, {}, {}, UnionFind(n), UnionFind(n),
    )  # fmt: skip
    for grp in ex_groups:  # exact: chained within a group (correlation 1)
        for a, b in zip(grp, grp[1:], strict=False):
            g.edges[(a, b)] = ("exact", 1.0)
        for a in grp:
            for b in grp:
                if split_of[a] == "Testing" and split_of[b] == "Training":
                    g.cross[(a, b)] = ("exact", 1.0)
    for a, b, c in near:
        g.edges.setdefault((a, b), g.kind(a, b, c))
        if split_of[a] != split_of[b]:
            t, r = (a, b) if split_of[a] == "Testing" else (b, a)
            g.cross.setdefault((t, r), g.kind(a, b, c))
    for a, b in g.edges:
        g.uf_all.union(a, b)
        if split_of[a] == split_of[b]:
            g.uf_split.union(a, b)
    return g


def _group_lists(g: _DupGraph) -> dict[str, list[dict[str, Any]]]:
    """The report's exact groups, near groups, conflicting-label groups and leak pairs."""
    components = g.uf_all.groups()
    exact_out = [
        {"sha256": g.hashes[grp[0]], "files": g.files(grp), "classes": g.classes(grp),
         "cross_split": len({g.split_of[k] for k in grp}) > 1}
        for grp in g.ex_groups
    ]  # fmt: skip
    near_corr: dict[int, list[float]] = {}
    for (a, _), (kind, c) in g.edges.items():
        if kind == "near":
            near_corr.setdefault(g.uf_all.find(a), []).append(c)
    near_out = []
    for comp in components:
        if len({g.hashes[k] for k in comp}) == 1:
            continue  # an exact group and nothing more: listed there
        comp_edges = near_corr.get(g.uf_all.find(comp[0]), [])
        near_out.append(
            {"files": g.files(comp), "classes": g.classes(comp),
             "cross_split": len({g.split_of[k] for k in comp}) > 1,
             "min_correlation": round(min(comp_edges), 5) if comp_edges else 1.0}
        )  # fmt: skip
    conflicting = [
        {"files": g.files(c), "classes": g.classes(c)}
        for c in components
        if len({g.label_of[k] for k in c}) > 1
    ]
    leak_pairs = [
        {"test": g.names[t], "train": g.names[r], "kind": kind, "correlation": round(c, 5),
         "test_class": CLASS_NAMES[g.label_of[t]], "train_class": CLASS_NAMES[g.label_of[r]]}
        for (t, r), (kind, c) in sorted(g.cross.items())
    ]  # fmt: skip
    return {"exact_groups": exact_out, "near_groups": near_out, "conflicting": conflicting,
            "leak_pairs": leak_pairs}  # fmt: skip


def _policy_drops(g: _DupGraph, policy: str) -> dict[int, dict[str, Any]]:
    """Files the policy drops (global indices) with the reason for each."""
    dropped: dict[int, dict[str, Any]] = {}
    leak_train: dict[int, tuple[int, str, float]] = {}
    for (t, r), (kind, c) in sorted(g.cross.items()):
        leak_train.setdefault(r, (t, kind, c))
    if policy in ("keep-one", "drop-from-train"):
        for r, (t, kind, c) in sorted(leak_train.items()):
            dropped[g.valid[r]] = {
                "reason": "leak", "kind": kind, "of": g.names[t], "correlation": round(c, 5)
            }  # fmt: skip
    if policy != "keep-one":
        return dropped
    for c in g.uf_all.groups():
        if len({g.label_of[k] for k in c}) > 1:
            for k in c:
                if g.split_of[k] == "Training" and g.valid[k] not in dropped:
                    dropped[g.valid[k]] = {
                        "reason": "conflicting-labels", "kind": "group",
                        "of": g.names[c[0]] if c[0] != k else g.names[c[-1]], "correlation": None,
                    }  # fmt: skip
    for comp in g.uf_split.groups():
        left = [k for k in comp if g.valid[k] not in dropped]
        for k in left[1:]:
            same = g.hashes[k] == g.hashes[left[0]]
            corr = 1.0 if same else float(g.X[left[0]] @ g.X[k])
            dropped[g.valid[k]] = {
                "reason": "duplicate", "kind": "exact" if same else "near",
                "of": g.names[left[0]], "correlation": round(corr, 5),
            }  # fmt: skip
    return dropped


def _stats(g: _DupGraph, lists: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Counts, as the data README states them."""
    test_exact = sorted({t for (t, _), (kind, _) in g.cross.items() if kind == "exact"})
    test_any = sorted({t for (t, _) in g.cross})

    def by_class(idx: list[int]) -> dict[str, int]:
        c = Counter(CLASS_NAMES[g.label_of[k]] for k in idx)
        return {name: c.get(name, 0) for name in CLASS_NAMES} | {"total": len(idx)}

    near = g.near
    return {
        "exact_groups": len(g.ex_groups),
        "exact_files": sum(len(grp) for grp in g.ex_groups),
        "exact_groups_cross_split": sum(1 for e in lists["exact_groups"] if e["cross_split"]),
        "near_groups": len(lists["near_groups"]),
        "near_files": sum(len(e["files"]) for e in lists["near_groups"]),
        "near_pairs": len(near),
        "near_pairs_non_exact": sum(1 for a, b, _ in near if g.hashes[a] != g.hashes[b]),
        "near_pairs_label_agreement": (
            round(sum(1 for a, b, _ in near if g.label_of[a] == g.label_of[b]) / len(near), 5)
            if near
            else None
        ),
        "conflicting_label_groups": len(lists["conflicting"]),
        "leak_pairs": len(g.cross),
        "leak_pairs_exact": sum(1 for v in g.cross.values() if v[0] == "exact"),
        "leak_pairs_near": sum(1 for v in g.cross.values() if v[0] == "near"),
        "test_with_exact_copy_in_train": by_class(test_exact),
        "test_with_exact_or_near_copy_in_train": by_class(test_any),
        "train_with_copy_in_test": len({r for (_, r) in g.cross}),
    }


def _dedupe(
    samples: list[Sample],
    rel: list[str],
    results: list[dict[str, Any]],
    valid: list[int],
    options: CleanOptions,
) -> dict[str, Any]:
    """Exact/near groups, leaks, conflicting labels and the policy's drops (global indices)."""
    g = _graph(samples, rel, results, valid, options.near_threshold)
    lists = _group_lists(g)
    return lists | {
        "dropped": _policy_drops(g, options.policy),
        "leaked_test": {g.valid[t] for (t, _) in g.cross},
        "stats": _stats(g, lists),
    }


# ---------------------------------------------------------------- summary


def format_summary(report: dict) -> str:
    """A short aligned text table of a clean report."""
    counts = report["counts"]
    lines = [
        f"clean: {report['input']} -> {report['output']}  "
        f"(policy {report['options']['policy']}, near > {report['options']['near_threshold']})",
        "",
        f"{'split':<9} {'class':<11} {'before':>7} {'quarant.':>9} {'dropped':>8} {'after':>7}",
    ]
    for split in SPLITS:
        if counts["before"][split]["total"] == 0:
            continue
        for name in (*CLASS_NAMES, "total"):
            lines.append(
                f"{split:<9} {name:<11} {counts['before'][split][name]:>7} "
                f"{counts['quarantined'][split][name]:>9} {counts['dropped'][split][name]:>8} "
                f"{counts['after'][split][name]:>7}"
            )
    st = report["stats"]
    reasons = Counter(q["reason"] for q in report["quarantined"])
    drops = Counter(d["reason"] for d in report["dropped"])
    lf = report["leak_free_test"]
    t = report["timings"]

    def tally(total: int, by: Counter) -> str:
        detail = ", ".join(f"{k} {v}" for k, v in sorted(by.items()))
        return f"{total} ({detail})" if detail else f"{total}"

    rows = [
        ("quarantined", tally(len(report["quarantined"]), reasons)),
        ("dropped", tally(len(report["dropped"]), drops)),
        (
            "exact dup groups",
            f"{st['exact_groups']} ({st['exact_files']} files, "
            f"{st['exact_groups_cross_split']} across splits)",
        ),
        ("near dup groups", f"{st['near_groups']} ({st['near_files']} files)"),
        ("conflicting labels", f"{st['conflicting_label_groups']} groups"),
        (
            "cross-split leaks",
            f"{st['leak_pairs']} pairs (exact {st['leak_pairs_exact']}, "
            f"near {st['leak_pairs_near']})",
        ),
        (
            "test with copy in train",
            f"{st['test_with_exact_or_near_copy_in_train']['total']} "
            f"(exact {st['test_with_exact_copy_in_train']['total']})",
        ),
        ("leak-free test", f"{lf['count']} of {lf['of_test_written']} -> {lf['file']}"),
        (
            "validation split",
            f"no splits/ written: {report['splits']['not_written']}"
            if "not_written" in report["splits"]
            else f"{report['splits']['val_count']} of "
            f"{report['splits']['train_count'] + report['splits']['val_count']} Training images "
            f"in {report['splits']['groups']} groups (copies of one scan kept together) "
            "-> splits/",
        ),
        ("crop fallbacks", f"{report['crop']['fallback_count']}"),
        (
            "wall time",
            f"{t['wall_s']:.1f} s, {t['images_per_s']} images/s, {t['workers']} workers",
        ),
    ]
    if report.get("replaced_files"):
        rows.insert(0, ("replaced", f"{report['replaced_files']} files of an earlier clean run "
                                    "in this folder (rebuilt on every run)"))  # fmt: skip
    width = max(len(k) for k, _ in rows)
    lines.append("")
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
