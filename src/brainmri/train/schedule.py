"""Per-step learning rate of one stage: timm's CosineLRScheduler × a ReduceLROnPlateau scale.

Within a stage of E epochs of S optimizer steps each, with W warm-up epochs:
- steps 0 .. W·S−1: linear warm-up from `warmup_lr_init` towards `lr` (timm, per step, so a
  one-epoch warm-up ramps over that epoch's steps);
- then a cosine from `lr` down to `min_lr` over the remaining (E−W)·S steps (timm's
  `warmup_prefix=True`), and `min_lr` after it;
- after warm-up the cosine value is multiplied by the plateau scale (× factor after `patience`
  epochs without a new best) and floored at `min_lr`: the floor holds whatever the plateau did.
"""

from __future__ import annotations

import torch
from timm.scheduler import CosineLRScheduler

from brainmri.config import StageConfig


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


class StageSchedule:
    """Sets the optimizer's LR before every step of one stage (see the module doc)."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        stage: StageConfig,
        steps_per_epoch: int,
        plateau: PlateauScale,
    ) -> None:
        total = max(1, stage.epochs * steps_per_epoch)
        self.warmup_steps = min(stage.warmup_epochs * steps_per_epoch, total)
        self.min_lr = stage.min_lr
        self.plateau = plateau
        self.optimizer = optimizer
        self.cosine = CosineLRScheduler(
            optimizer,
            t_initial=max(1, total - self.warmup_steps),
            lr_min=stage.min_lr,
            warmup_t=self.warmup_steps,
            warmup_lr_init=stage.warmup_lr_init,
            warmup_prefix=True,
            t_in_epochs=False,
        )

    def set_step(self, step: int) -> float:
        """Set (and return) the LR for optimizer step `step` (0-based, within the stage)."""
        self.cosine.step_update(step)
        lr = 0.0
        for group in self.optimizer.param_groups:
            lr = group["lr"]
            if step >= self.warmup_steps:
                lr = max(lr * self.plateau.scale, self.min_lr)
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return {"cosine": self.cosine.state_dict(), "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.cosine.load_state_dict(state["cosine"])
        self.plateau.load_state_dict(state["plateau"])
