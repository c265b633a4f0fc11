"""Per-epoch learning rate: linear warm-up, then cosine decay to a floor.

lr(e) = init·(e+1)/warmup                                  for e < warmup
lr(e) = min + (init − min)·(1 + cos(π·progress))/2          after, progress = (e−warmup)/(E−warmup)
ReduceLROnPlateau acts on top of it as a multiplicative scale (see PlateauScale).
"""

from __future__ import annotations

import math


def cosine_with_warmup(
    epoch: int, epochs: int, init_lr: float, min_lr: float, warmup: int
) -> float:
    if warmup > 0 and epoch < warmup:
        return init_lr * (epoch + 1) / warmup
    decay_epochs = max(1, epochs - warmup)
    progress = min(1.0, (epoch - warmup) / decay_epochs)
    return min_lr + (init_lr - min_lr) * (1 + math.cos(math.pi * progress)) / 2


class PlateauScale:
    """ReduceLROnPlateau as a scale factor: × factor after `patience` epochs without a new best."""

    def __init__(self, patience: int, factor: float, mode: str = "min") -> None:
        self.patience, self.factor, self.mode = patience, factor, mode
        self.scale = 1.0
        self.best: float | None = None
        self.bad_epochs = 0

    def step(self, value: float) -> float:
        better = self.best is None or (
            value < self.best if self.mode == "min" else value > self.best
        )
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.scale *= self.factor
                self.bad_epochs = 0
        return self.scale

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = state["scale"], state["best"], state["bad_epochs"]
