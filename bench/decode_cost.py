"""CPU cost of turning one file into the model's plane: `prepare_bytes` (read, quarantine
rules, decode, colour, background and grain checks, auto crop, resize), one thread.

This is the per-file work the decode pool of `predict`/`serve` does beside the model; on a
2-core machine it competes with the model for the same cores. Rounds are interleaved with a
plain decode (`load_gray` + resize) as the floor, and the median of the rounds is reported.

    python bench/decode_cost.py [--split Training] [--limit 1311] [--rounds 5]
        [--out bench/results/decode_cost.json]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external import provenance, write_json  # noqa: E402

from brainmri.data.folders import resolve_data_dir, scan_split  # noqa: E402
from brainmri.data.images import load_gray, resize_square  # noqa: E402
from brainmri.errors import BrainMRIError  # noqa: E402
from brainmri.infer.records import prepare_bytes  # noqa: E402


def per_file_ms(fn, blobs: list[bytes]) -> float:
    t0 = time.perf_counter()
    for b in blobs:
        try:
            fn(b)
        except BrainMRIError:
            pass  # a refused file costs what it cost
    return (time.perf_counter() - t0) / len(blobs) * 1e3


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--split", default="Training", choices=["Training", "Testing"])
    p.add_argument("--limit", type=int, default=1311, help="N files evenly spaced over the split")
    p.add_argument("--size", type=int, default=192)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("bench/results/decode_cost.json"))
    args = p.parse_args(argv)
    files = scan_split(resolve_data_dir(args.data), args.split)
    files = [files[i] for i in np.linspace(0, len(files) - 1, args.limit).astype(int)]
    blobs = [f.path.read_bytes() for f in files]
    stages = {
        "plain_decode_resize": lambda b: resize_square(load_gray(io.BytesIO(b)), args.size),
        "prepare_bytes": lambda b: prepare_bytes(b, "x.jpg", args.size, "auto"),
    }
    rounds: dict[str, list[float]] = {k: [] for k in stages}
    for _ in range(args.rounds):
        for name, fn in stages.items():
            rounds[name].append(per_file_ms(fn, blobs))
    res = {
        "files": len(blobs),
        "split": args.split,
        "ms_per_file": {k: float(np.median(v)) for k, v in rounds.items()},
        "rounds": rounds,
        "provenance": provenance(),
    }
    write_json(args.out, res)
    print({k: round(v, 3) for k, v in res["ms_per_file"].items()})
    return res


if __name__ == "__main__":
    main()
