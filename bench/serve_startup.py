"""`brainmri serve` from launch to its first answers: seconds until /healthz is 200, and the
server's resident memory after start, after one /v1/predict and after one /v1/explain.

Each run starts a fresh server on a free port with the shipped model (its ONNX export already
cached) and sends one benchmark Training image (no test image). `--before DIR` alternates the
runs with the code of another checkout's `src/` (put first on PYTHONPATH), for a before/after.

    python bench/serve_startup.py [--runs 3] [--before /tmp/old/src] \
        [--out bench/results/speed/serve_startup.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from robustness import report_head, write_report
from serve_load import free_port, rss_mib

from brainmri.data.folders import resolve_data_dir

BOUNDARY = "brainmri-bench-boundary"


def post(url: str, data: bytes, name: str) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    body = head + data + f"\r\n--{BOUNDARY}--\r\n".encode()
    ctype = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
    with urllib.request.urlopen(urllib.request.Request(url, body, ctype), timeout=300) as r:
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status}")
        return r.read()


def wait_healthy(url: str, proc: subprocess.Popen, limit_s: float = 120.0) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server not healthy in time")


def one_run(image: Path, src: str | None) -> dict[str, float]:
    """One fresh server: seconds to /healthz, RSS after start, predict and explain."""
    port = free_port()
    env = {**os.environ, **({"PYTHONPATH": src} if src else {})}
    cmd = [sys.executable, "-m", "brainmri", "serve", "--port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp", env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        out = {"healthz_s": time.perf_counter() - t0}
        time.sleep(0.5)
        out["rss_start_mib"] = rss_mib(proc.pid)
        data = image.read_bytes()
        post(url + "/v1/predict", data, image.name)
        time.sleep(0.3)
        out["rss_predict_mib"] = rss_mib(proc.pid)
        t1 = time.perf_counter()
        post(url + "/v1/explain", data, image.name)
        out["first_explain_s"] = time.perf_counter() - t1
        time.sleep(0.3)
        out["rss_explain_mib"] = rss_mib(proc.pid)
        return {k: round(v, 3) for k, v in out.items()}
    finally:
        proc.terminate()
        proc.wait(20)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", default=None, help="another checkout's src/ to compare with")
    ap.add_argument("--out", type=Path, default=Path("bench/results/speed/serve_startup.json"))
    args = ap.parse_args(argv)
    image = sorted((resolve_data_dir(None) / "Training" / "glioma").iterdir())[0]
    labels = {"after": None} if args.before is None else {"before": args.before, "after": None}
    runs: dict[str, list[dict]] = {k: [] for k in labels}
    for i in range(args.runs):
        for label, src in labels.items():
            runs[label].append(one_run(image, src))
            print(label, i, json.dumps(runs[label][-1]), flush=True)
    import torch

    report = {
        **report_head("serve_startup", __file__, argv, torch.device("cpu")),
        "image": image.name,
        "before_src": args.before,
        "runs": runs,
        "medians": {
            label: {k: round(statistics.median(r[k] for r in rs), 3) for k in rs[0]}
            for label, rs in runs.items()
        },
    }
    print(json.dumps(report["medians"], indent=1))
    write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
