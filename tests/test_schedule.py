"""Cosine-with-warm-up learning rate and the ReduceLROnPlateau scale."""

from __future__ import annotations

import math

import pytest

from brainmri.train.schedule import PlateauScale, cosine_with_warmup

INIT, MIN = 1e-3, 1e-5


def formula(e: int, epochs: int, init: float, low: float, warmup: int) -> float:
    """The documented schedule, written out independently."""
    if e < warmup:
        return init * (e + 1) / warmup
    progress = (e - warmup) / (epochs - warmup)
    return low + (init - low) * (1 + math.cos(math.pi * progress)) / 2


def test_warmup_then_cosine_key_points():
    epochs, warmup = 10, 2
    lr = [cosine_with_warmup(e, epochs, INIT, MIN, warmup) for e in range(epochs)]
    assert lr[0] == pytest.approx(INIT / warmup)  # warm-up start
    assert lr[warmup - 1] == pytest.approx(INIT)  # warm-up end
    assert lr[warmup] == pytest.approx(INIT)  # first decay epoch: progress 0
    mid = warmup + (epochs - warmup) // 2  # progress 0.5
    assert lr[mid] == pytest.approx(MIN + (INIT - MIN) / 2)
    last = formula(epochs - 1, epochs, INIT, MIN, warmup)
    assert lr[-1] == pytest.approx(last)
    assert MIN < lr[-1] < lr[mid]
    for e, value in enumerate(lr):
        assert value == pytest.approx(formula(e, epochs, INIT, MIN, warmup)), e


def test_warmup_is_linear():
    lr = [cosine_with_warmup(e, 20, 0.1, 0.0, 4) for e in range(4)]
    assert lr == pytest.approx([0.025, 0.05, 0.075, 0.1])


def test_no_warmup():
    epochs = 5
    lr = [cosine_with_warmup(e, epochs, INIT, MIN, 0) for e in range(epochs)]
    assert lr[0] == pytest.approx(INIT)
    for e, value in enumerate(lr):
        assert value == pytest.approx(formula(e, epochs, INIT, MIN, 0)), e
    assert all(a > b for a, b in zip(lr, lr[1:], strict=False)), "strictly decreasing"
    # epoch 2 of 4 decay epochs is exactly half way
    assert cosine_with_warmup(2, 4, INIT, MIN, 0) == pytest.approx(MIN + (INIT - MIN) / 2)


def test_min_equal_init_is_constant():
    lr = [cosine_with_warmup(e, 6, 0.01, 0.01, 0) for e in range(6)]
    assert lr == pytest.approx([0.01] * 6)


def test_never_below_floor_past_the_end():
    assert cosine_with_warmup(50, 10, INIT, MIN, 2) == pytest.approx(MIN)


def test_plateau_reduces_after_patience_and_resets():
    p = PlateauScale(patience=2, factor=0.5)
    assert p.step(1.0) == 1.0  # first value is the best
    assert p.step(1.0) == 1.0  # not better (equal): 1 bad epoch
    assert p.bad_epochs == 1
    assert p.step(1.2) == 0.5  # 2 bad epochs: reduce
    assert p.bad_epochs == 0  # counter reset
    assert p.step(1.1) == 0.5  # 1 bad epoch again
    assert p.step(1.3) == 0.25  # 2 more: reduce again
    assert p.step(0.5) == 0.25  # improvement: no change
    assert p.best == 0.5 and p.bad_epochs == 0
    assert p.step(0.6) == 0.25


def test_plateau_max_mode():
    p = PlateauScale(patience=1, factor=0.1, mode="max")
    p.step(0.5)
    assert p.step(0.6) == 1.0  # higher is better in max mode
    assert p.step(0.55) == pytest.approx(0.1)


def test_plateau_state_dict_round_trip():
    a = PlateauScale(patience=3, factor=0.5)
    for v in (1.0, 0.9, 0.95, 0.97, 0.99, 0.98):
        a.step(v)
    state = a.state_dict()
    assert state == {"scale": 0.5, "best": 0.9, "bad_epochs": 1}
    b = PlateauScale(patience=3, factor=0.5)
    b.load_state_dict(state)
    assert b.state_dict() == state
    for v in (0.99, 0.99, 0.8, 0.85):
        assert a.step(v) == b.step(v)
    assert a.state_dict() == b.state_dict()
