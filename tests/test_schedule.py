"""The per-step stage schedule (timm cosine with warm-up, plateau scale, min_lr floor)."""

from __future__ import annotations

import pytest
import torch

from brainmri.config import StageConfig
from brainmri.train.schedule import PlateauScale, StageSchedule


def lrs(stage: StageConfig, steps_per_epoch: int, plateau: PlateauScale | None = None):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=stage.lr)
    sched = StageSchedule(opt, stage, steps_per_epoch, plateau or PlateauScale(3, 0.5))
    out = []
    for step in range(stage.epochs * steps_per_epoch):
        out.append(sched.set_step(step))
        assert opt.param_groups[0]["lr"] == out[-1]  # what the optimizer steps with
    return out


def stage(**kw) -> StageConfig:
    base = dict(name="s", trainable_fraction=1.0, epochs=5, lr=1e-3, min_lr=1e-5)
    return StageConfig(**(base | kw))


def test_one_epoch_warmup_ramps_over_its_steps():
    lr = lrs(stage(warmup_epochs=1, warmup_lr_init=1e-6), steps_per_epoch=10)
    assert lr[0] == pytest.approx(1e-6)  # starts small, not at the full LR
    assert all(a < b for a, b in zip(lr[:10], lr[1:11], strict=True))  # rises every step
    assert lr[9] < 1e-3 and lr[10] == pytest.approx(1e-3)  # peak right after the warm-up
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))  # then only decays


def test_cosine_reaches_min_lr_and_halfway_is_the_midpoint():
    lr = lrs(stage(epochs=4, warmup_epochs=0), steps_per_epoch=25)  # 100 decay steps
    assert lr[0] == pytest.approx(1e-3)
    assert lr[50] == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-6)  # cos(π/2) = 0
    assert 1e-5 <= lr[-1] < 1.05e-5  # the last step is one step short of the end
    assert min(lr) >= 1e-5


def test_plateau_scale_is_floored_at_min_lr():
    plateau = PlateauScale(patience=1, factor=1e-3)
    for v in (1.0, 2.0, 3.0, 4.0):  # three reductions: scale 1e-9
        plateau.step(v)
    lr = lrs(stage(epochs=3, warmup_epochs=1), 4, plateau)
    assert lr[3] == pytest.approx(1e-6 + 3 * (1e-3 - 1e-6) / 4)  # warm-up: not scaled
    assert lr[4:] == pytest.approx([1e-5] * 8)  # 1e-3 × 1e-9 would be 1e-12: floor holds


def test_min_equal_lr_is_constant_after_warmup():
    lr = lrs(stage(epochs=3, lr=0.01, min_lr=0.01, warmup_epochs=0), 4)
    assert lr == pytest.approx([0.01] * 12)


def test_schedule_state_round_trip_continues_identically():
    cfg = stage(epochs=4, warmup_epochs=1)
    a_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    a = StageSchedule(a_opt, cfg, 5, PlateauScale(1, 0.5))
    for step in range(7):
        a.set_step(step)
        a.plateau.step(float(step % 2))
    b_opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    b = StageSchedule(b_opt, cfg, 5, PlateauScale(1, 0.5))
    b.load_state_dict(a.state_dict())
    assert [a.set_step(s) for s in range(7, 20)] == [b.set_step(s) for s in range(7, 20)]


def test_plateau_reduces_after_patience_and_resets():
    p = PlateauScale(patience=2, factor=0.5)
    assert p.step(1.0) == 1.0  # first value is the best
    assert p.step(1.0) == 1.0  # not better (equal): 1 bad epoch
    assert p.step(1.2) == 0.5  # 2 bad epochs: reduce, counter reset
    assert p.bad_epochs == 0
    assert p.step(1.1) == 0.5
    assert p.step(1.3) == 0.25
    assert p.step(0.5) == 0.25 and p.best == 0.5


def test_plateau_max_mode():
    p = PlateauScale(patience=1, factor=0.1, mode="max")
    p.step(0.5)
    assert p.step(0.6) == 1.0
    assert p.step(0.55) == pytest.approx(0.1)
