"""One rank of the DDP tests (run by torchrun from tests/test_ddp.py, not collected by pytest).

Trains the smoke recipe with the given overrides and saves what this rank ended with (its
final weights and buffers) to DUMP/rank<r>.pt, so the test can compare the ranks' tensors.
`--delay-rank R:S` makes rank R start training S seconds after the process group is up (a
slow rank).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from brainmri.config import load_recipe
from brainmri.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dump", type=Path, required=True)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--delay-rank", default=None)
    args = ap.parse_args()
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")  # first, so that a delay below really leaves a rank behind
    if args.delay_rank:
        slow, seconds = args.delay_rank.split(":")
        if rank == int(slow):
            time.sleep(float(seconds))
    result = train(load_recipe("smoke", args.set), args.data, args.out, device="cpu")
    args.dump.mkdir(parents=True, exist_ok=True)
    state = result.model.state_dict() if result.model is not None else {}
    torch.save(
        {"state": state, "epochs": result.epochs_run, "best": result.best_val_loss},
        args.dump / f"rank{rank}.pt",
    )


if __name__ == "__main__":
    main()
