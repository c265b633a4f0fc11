"""`brainmri clean`: validate, quarantine, dedupe, crop and resize a raw folder into a clean copy.

One pass over the files, in worker processes: read the bytes once (sha256), check the header
(format, mode, frames, size), decode fully (PIL load, via data/images.py so every file is
reduced to luminance the same way), make the 24x24 dedupe thumbnail, crop to the brain, resize,
replicate to 3 channels and write a quality-95 JPEG. Then, in the main process: exact and near
duplicate groups, Training/Testing leaks, the duplicate policy (outputs of dropped files are
removed), the leak-free test list, the seeded train/val split and the JSON report.

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
    stratified_split,
    write_file_list,
)
from brainmri.data.images import resize_square, to_rgb
from brainmri.data.quality import MIN_SIDE, check_plane
from brainmri.data.quality import bad as _bad
from brainmri.data.quality import check_header as _check_header
from brainmri.data.quality import decode as _decode
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
        if not 0.0 <= self.val_fraction < 1.0:
            raise BrainMRIError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
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


def _prepare_out(out: Path) -> None:
    """Create OUT, or clear the outputs of an earlier clean run there (never anything else)."""
    if out.exists() and not out.is_dir():
        raise BrainMRIError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise BrainMRIError(
            f"--out {out} is not empty and was not written by `brainmri clean`: "
            "pick a new folder or empty it"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by brainmri clean; rebuilt on every run\n")
    for name in MANAGED:
        p = out / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)


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

    bar = dict(total=len(jobs), desc="clean: decode", unit="img", disable=not progress)
    if workers <= 1:
        return [process_file(j) for j in tqdm(jobs, **bar)]
    import multiprocessing as mp

    chunk = max(1, min(32, len(jobs) // (workers * 8) or 1))
    with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        return list(tqdm(pool.imap(process_file, jobs, chunksize=chunk), **bar))


def run_clean(data: Path, out: Path, options: CleanOptions) -> dict:
    """Clean `data` (Kaggle layout) into `out`; write and return the report (see module doc)."""
    t_start = time.perf_counter()
    data, out = Path(data), Path(out)
    if not isinstance(options, CleanOptions):
        raise BrainMRIError("options must be a CleanOptions")
    options.__post_init__()  # re-validate: fields may have been changed after construction
    data_r, out_r = _check_paths(data, out)
    scanned = scan_dataset(data, all_files=True)
    samples = [s for split in SPLITS for s in scanned[split]]
    rel_in = [s.path.relative_to(data).as_posix() for s in samples]
    rel_out = _output_names(samples)
    _prepare_out(out)
    t_scan = time.perf_counter()

    workers = max(1, min(options.workers or os.cpu_count() or 1, len(samples)))
    jobs = [
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
    results = _run_jobs(jobs, workers, options.progress)
    results.sort(key=lambda r: r["index"])
    t_decode = time.perf_counter()

    quarantined = [
        {
            "path": rel_in[i],
            "split": samples[i].split,
            "class": samples[i].class_name,
            "reason": r["reason"],
            "detail": r["detail"],
        }
        for i, r in enumerate(results)
        if not r["ok"]
    ]
    valid = [i for i, r in enumerate(results) if r["ok"]]
    dd = _dedupe(samples, rel_in, results, valid, options)
    t_dedupe = time.perf_counter()

    dropped: dict[int, dict[str, Any]] = dd["dropped"]
    for i in sorted(dropped):
        (out / rel_out[i]).unlink(missing_ok=True)
    kept = [i for i in valid if i not in dropped]
    kept_set = set(kept)

    def out_sample(i: int) -> Sample:
        return Sample(out / rel_out[i], samples[i].label, samples[i].split)

    leak_free = [
        out_sample(i) for i in kept if samples[i].split == "Testing" and i not in dd["leaked_test"]
    ]
    write_file_list(out / LEAK_FREE_NAME, leak_free, out)
    train_kept = [out_sample(i) for i in kept if samples[i].split == "Training"]
    tr, va = stratified_split(train_kept, options.val_fraction, options.seed)
    write_file_list(out / "splits" / "train.txt", tr, out)
    write_file_list(out / "splits" / "val.txt", va, out)

    fallbacks = [
        {"path": rel_in[i], "reason": results[i]["fallback_reason"]}
        for i in kept
        if results[i]["fallback"]
    ]
    t_end = time.perf_counter()
    wall = t_end - t_start
    n_test_kept = sum(1 for i in kept if samples[i].split == "Testing")
    report: dict[str, Any] = {
        "tool": f"brainmri {__version__} clean",
        "input": str(data_r),
        "output": str(out_r),
        "options": asdict(options),
        "counts": {
            "before": _counts(samples),
            "quarantined": _counts(samples, {i for i, r in enumerate(results) if not r["ok"]}),
            "dropped": _counts(samples, set(dropped)),
            "after": _counts(samples, kept_set),
        },
        "quarantined": quarantined,
        "dropped": [
            {"path": rel_in[i], "output": rel_out[i], **dropped[i]} for i in sorted(dropped)
        ],
        "exact_groups": dd["exact_groups"],
        "near_groups": dd["near_groups"],
        "leak_pairs": dd["leak_pairs"],
        "conflicting_label_groups": dd["conflicting"],
        "stats": dd["stats"],
        "crop": {"enabled": options.crop, "fallback_count": len(fallbacks), "fallbacks": fallbacks},
        "leak_free_test": {
            "file": LEAK_FREE_NAME,
            "count": len(leak_free),
            "of_test_written": n_test_kept,
            "definition": "Testing images as written with no exact or near copy in the "
            "original (pre-drop) Training images",
        },
        "splits": {
            "train": "splits/train.txt",
            "val": "splits/val.txt",
            "train_count": len(tr),
            "val_count": len(va),
        },
        "timings": {
            "wall_s": round(wall, 3),
            "scan_s": round(t_scan - t_start, 3),
            "decode_write_s": round(t_decode - t_scan, 3),
            "dedupe_s": round(t_dedupe - t_decode, 3),
            "finish_s": round(t_end - t_dedupe, 3),
            "images": len(samples),
            "images_per_s": round(len(samples) / wall, 2) if wall > 0 else None,
            "workers": workers,
            "python": platform.python_version(),
        },
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _dedupe(
    samples: list[Sample],
    rel: list[str],
    results: list[dict[str, Any]],
    valid: list[int],
    options: CleanOptions,
) -> dict[str, Any]:
    """Exact/near groups, leaks, conflicting labels and the policy's drops (global indices)."""
    n = len(valid)
    hashes = [results[g]["sha256"] for g in valid]
    X = (
        stack_vectors(results[g]["vector"] for g in valid)
        if n
        else np.zeros((0, THUMB_SIDE**2), np.float32)
    )
    split_of = [samples[g].split for g in valid]
    label_of = [samples[g].label for g in valid]

    ex_groups = exact_groups(hashes)
    near = near_pairs(X, None, options.near_threshold)

    def corr(a: int, b: int) -> float:
        return 1.0 if hashes[a] == hashes[b] else float(X[a] @ X[b])

    # edges: exact (chained within a group; correlation 1) and near
    edges: dict[tuple[int, int], tuple[str, float]] = {}
    for g in ex_groups:
        for a, b in zip(g, g[1:], strict=False):
            edges[(a, b)] = ("exact", 1.0)
    for a, b, c in near:
        edges.setdefault((a, b), ("exact", 1.0) if hashes[a] == hashes[b] else ("near", c))

    # cross-split pairs: every (test, train) pair that is exact or near
    cross: dict[tuple[int, int], tuple[str, float]] = {}
    for g in ex_groups:
        for a in g:
            for b in g:
                if split_of[a] == "Testing" and split_of[b] == "Training":
                    cross[(a, b)] = ("exact", 1.0)
    for a, b, c in near:
        if split_of[a] != split_of[b]:
            t, r = (a, b) if split_of[a] == "Testing" else (b, a)
            cross.setdefault((t, r), ("exact", 1.0) if hashes[a] == hashes[b] else ("near", c))

    uf_all = UnionFind(n)
    uf_split = UnionFind(n)
    for a, b in edges:
        uf_all.union(a, b)
        if split_of[a] == split_of[b]:
            uf_split.union(a, b)
    components = uf_all.groups()

    def files(group: list[int]) -> list[str]:
        return [rel[valid[k]] for k in group]

    def classes(group: list[int]) -> list[str]:
        return [CLASS_NAMES[label_of[k]] for k in group]

    exact_out = [
        {
            "sha256": hashes[g[0]],
            "files": files(g),
            "classes": classes(g),
            "cross_split": len({split_of[k] for k in g}) > 1,
        }
        for g in ex_groups
    ]
    near_corr: dict[int, list[float]] = {}
    for (a, _), (kind, c) in edges.items():
        if kind == "near":
            near_corr.setdefault(uf_all.find(a), []).append(c)
    near_out = []
    for comp in components:
        if len({hashes[k] for k in comp}) == 1:
            continue  # an exact group and nothing more: listed there
        comp_edges = near_corr.get(uf_all.find(comp[0]), [])
        near_out.append(
            {
                "files": files(comp),
                "classes": classes(comp),
                "cross_split": len({split_of[k] for k in comp}) > 1,
                "min_correlation": round(min(comp_edges), 5) if comp_edges else 1.0,
            }
        )
    conflicting = [
        {"files": files(c), "classes": classes(c)}
        for c in components
        if len({label_of[k] for k in c}) > 1
    ]
    leak_pairs = [
        {
            "test": rel[valid[t]],
            "train": rel[valid[r]],
            "kind": kind,
            "correlation": round(c, 5),
            "test_class": CLASS_NAMES[label_of[t]],
            "train_class": CLASS_NAMES[label_of[r]],
        }
        for (t, r), (kind, c) in sorted(cross.items())
    ]

    # ---- policy
    dropped: dict[int, dict[str, Any]] = {}
    leak_train: dict[int, tuple[int, str, float]] = {}
    for (t, r), (kind, c) in sorted(cross.items()):
        leak_train.setdefault(r, (t, kind, c))
    if options.policy in ("keep-one", "drop-from-train"):
        for r, (t, kind, c) in sorted(leak_train.items()):
            dropped[valid[r]] = {
                "reason": "leak",
                "kind": kind,
                "of": rel[valid[t]],
                "correlation": round(c, 5),
            }
    if options.policy == "keep-one":
        for c in components:
            if len({label_of[k] for k in c}) > 1:
                for k in c:
                    if split_of[k] == "Training" and valid[k] not in dropped:
                        dropped[valid[k]] = {
                            "reason": "conflicting-labels",
                            "kind": "group",
                            "of": rel[valid[c[0]]] if c[0] != k else rel[valid[c[-1]]],
                            "correlation": None,
                        }
        for comp in uf_split.groups():
            left = [k for k in comp if valid[k] not in dropped]
            for k in left[1:]:
                c = corr(left[0], k)
                dropped[valid[k]] = {
                    "reason": "duplicate",
                    "kind": "exact" if hashes[k] == hashes[left[0]] else "near",
                    "of": rel[valid[left[0]]],
                    "correlation": round(c, 5),
                }

    # ---- statistics, as the data README states them
    test_exact = sorted({t for (t, _), (kind, _) in cross.items() if kind == "exact"})
    test_any = sorted({t for (t, _) in cross})

    def by_class(idx: list[int]) -> dict[str, int]:
        c = Counter(CLASS_NAMES[label_of[k]] for k in idx)
        return {name: c.get(name, 0) for name in CLASS_NAMES} | {"total": len(idx)}

    stats = {
        "exact_groups": len(ex_groups),
        "exact_files": sum(len(g) for g in ex_groups),
        "exact_groups_cross_split": sum(1 for g in exact_out if g["cross_split"]),
        "near_groups": len(near_out),
        "near_files": sum(len(g["files"]) for g in near_out),
        "near_pairs": len(near),
        "near_pairs_non_exact": sum(1 for a, b, _ in near if hashes[a] != hashes[b]),
        "near_pairs_label_agreement": (
            round(sum(1 for a, b, _ in near if label_of[a] == label_of[b]) / len(near), 5)
            if near
            else None
        ),
        "conflicting_label_groups": len(conflicting),
        "leak_pairs": len(cross),
        "leak_pairs_exact": sum(1 for v in cross.values() if v[0] == "exact"),
        "leak_pairs_near": sum(1 for v in cross.values() if v[0] == "near"),
        "test_with_exact_copy_in_train": by_class(test_exact),
        "test_with_exact_or_near_copy_in_train": by_class(test_any),
        "train_with_copy_in_test": len(leak_train),
    }
    return {
        "exact_groups": exact_out,
        "near_groups": near_out,
        "leak_pairs": leak_pairs,
        "conflicting": conflicting,
        "dropped": dropped,
        "leaked_test": {valid[t] for t in test_any},
        "stats": stats,
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
        ("crop fallbacks", f"{report['crop']['fallback_count']}"),
        (
            "wall time",
            f"{t['wall_s']:.1f} s, {t['images_per_s']} images/s, {t['workers']} workers",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    lines.append("")
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)
