"""What a run carries across epochs, stages and resumes, and its `last.pt` checkpoint.

`last.pt` holds the model, the optimizer, the stage schedule (cosine + plateau), the gradient
scaler, the typed progress state and every random number generator (torch CPU and CUDA, NumPy,
Python), written atomically after each epoch. Resuming from it continues the very same
computation: on CPU an interrupted-then-resumed run ends with bitwise-equal weights
(tests/test_train.py).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brainmri.errors import BrainMRIError
from brainmri.model.checkpoint import atomic_write

LAST_FORMAT = 2


@dataclass
class TrainState:
    """Progress of a run; epochs are counted as finished epochs."""

    stage: int = 0  # index of the stage in progress
    stage_epoch: int = 0  # epochs finished in that stage
    epoch: int = 0  # epochs finished in all stages
    best: float = math.inf  # best monitored value over all stages (lower is better)
    best_acc: float = 0.0  # validation accuracy at that best
    stage_best: float = math.inf
    bad_epochs: int = 0  # epochs since the stage's last improvement (early stopping)
    stage_done: bool = False  # early-stopped
    elapsed: float = 0.0  # wall seconds of the run so far

    def next_stage(self) -> None:
        self.stage += 1
        self.stage_epoch, self.stage_best, self.bad_epochs = 0, math.inf, 0
        self.stage_done = False


@dataclass
class TrainResult:
    """What `train` returns (every rank): where the models are and the run's headline figures."""

    run_dir: Path
    best_path: Path
    final_path: Path
    best_val_loss: float
    best_val_acc: float
    epochs_run: int
    wall_seconds: float
    model: torch.nn.Module | None = field(default=None, repr=False)  # final weights (single run)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_last(path: Path, model: torch.nn.Module, st: TrainState, stage: dict | None) -> None:
    """Atomic last.pt: model, progress, RNGs and (mid-stage) optimizer/schedule/scaler states."""
    snapshot = {
        "format": LAST_FORMAT,
        "model": model.state_dict(),
        "state": asdict(st),
        "stage": stage,
        "rng": rng_state(),
    }
    atomic_write(path, lambda tmp: torch.save(snapshot, tmp))


def load_last(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BrainMRIError(f"nothing to resume: {path} not found")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved.get("format") != LAST_FORMAT:
        raise BrainMRIError(
            f"{path} was written by an older version of the training loop (no optimizer, "
            "schedule and RNG state): it cannot be resumed exactly; start a new run"
        )
    saved["state"] = TrainState(**saved["state"])
    return saved
