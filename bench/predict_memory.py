"""Memory of `brainmri predict` over a very large batch: does it stay flat?

Builds a folder of `--files` symbolic links that cycle through the benchmark's Training images
(no pixel is copied), runs `brainmri predict FOLDER --json OUT` as a child process, and reads
its resident memory (VmRSS from /proc, so Linux only) every `--every` seconds together with how
many records it has printed. Reported: RSS after 1 %, 10 %, 50 % and all of the files, the
growth from 10 % to the end, the throughput, the status counts, and a plot of RSS against
files done.

    python bench/predict_memory.py [--files 100000] [--data ../shared/data/brain-tumor-mri] \
        [--out bench/results/speed/predict_memory.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from robustness import report_head, write_report

from brainmri.data.folders import resolve_data_dir, scan_split


def link_folder(target: Path, sources: list[Path], n: int) -> None:
    """n symlinks in target, cycling through sources (names keep the suffix)."""
    target.mkdir(parents=True)
    for i in range(n):
        src = sources[i % len(sources)]
        (target / f"{i:06d}{src.suffix}").symlink_to(src.resolve())


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def watch(cmd: list[str], every: float) -> tuple[list[dict], int, str]:
    """Run cmd, sampling its RSS and the records printed so far; (samples, rc, stderr tail)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done, err = [0], []

    def count(stream, keep: bool) -> None:
        for line in stream:  # one line per file (ok on stdout, the others on stderr)
            done[0] += 1
            if keep:
                err.append(line)
                del err[:-5]

    readers = [
        threading.Thread(target=count, args=(proc.stdout, False), daemon=True),
        threading.Thread(target=count, args=(proc.stderr, True), daemon=True),
    ]
    for r in readers:
        r.start()
    t0, samples = time.time(), []
    while proc.poll() is None:
        rss = rss_mib(proc.pid)
        if rss is not None:
            samples.append({"s": round(time.time() - t0, 1), "files": done[0], "rss_mib": rss})
        time.sleep(every)
    for r in readers:
        r.join(timeout=10)
    return samples, proc.returncode, "".join(err)


def at_share(samples: list[dict], total: int, share: float) -> float:
    """RSS of the first sample with at least share * total files done."""
    return next(s["rss_mib"] for s in samples if s["files"] >= share * total)


def plot(samples: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot([s["files"] for s in samples], [s["rss_mib"] for s in samples], lw=1.5)
    ax.set_xlabel("files classified")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(0, max(s["rss_mib"] for s in samples) * 1.15)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--data", type=Path, default=None, help="benchmark folder with Training/")
    ap.add_argument("--every", type=float, default=2.0, help="seconds between RSS samples")
    ap.add_argument(
        "--out", type=Path, default=Path("bench/results/speed/predict_memory.json")
    )
    args = ap.parse_args(argv)
    sources = [s.path for s in scan_split(resolve_data_dir(args.data), "Training")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "links"
        link_folder(folder, sources, args.files)
        records = Path(tmp) / "records.json"
        cmd = [sys.executable, "-m", "brainmri", "predict", str(folder), "--json", str(records),
               "--no-progress"]  # fmt: skip
        t0 = time.time()
        samples, rc, err_tail = watch(cmd, args.every)
        seconds = time.time() - t0
        recs = json.loads(records.read_text())
    status: dict[str, int] = {}
    for r in recs:
        status[r["status"]] = status.get(r["status"], 0) + 1
    n = len(recs)
    rss = {f"{int(q * 100)}%": round(at_share(samples, n, q), 1) for q in (0.01, 0.1, 0.5, 1.0)}
    report = {
        **report_head("predict_memory", __file__, argv, torch.device("cpu")),
        "files": args.files,
        "records": n,
        "exit_code": rc,
        "status": status,
        "seconds": round(seconds, 1),
        "files_per_s": round(n / seconds, 1),
        "rss_mib_after": rss,
        "rss_peak_mib": round(max(s["rss_mib"] for s in samples), 1),
        "growth_from_10pct_mib": round(rss["100%"] - rss["10%"], 1),
        "stderr_tail": err_tail,
        "samples": samples,
    }
    write_report(args.out, report)
    plot(samples, args.out.with_suffix(".png"),
         f"brainmri predict over {n:,} files: resident memory")  # fmt: skip
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    return report


if __name__ == "__main__":
    main()
