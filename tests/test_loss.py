"""The training loss, class weights and temperature fitting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brainmri.train.loss import class_weights, fit_temperature, weighted_smoothed_ce


def previous_loss(logits, labels, weights, smoothing):
    """The loss as the loop computed it before (explicit smoothed one-hot targets)."""
    k = logits.shape[1]
    off = smoothing / k
    target = torch.full((len(labels), k), off)
    target.scatter_(1, labels[:, None], 1.0 - smoothing + off)
    per_sample = -(target * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    if weights is not None:
        per_sample = per_sample * weights[labels]
    return per_sample.mean()


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_loss_equals_the_previous_formula(weighted, smoothing):
    g = torch.Generator().manual_seed(int(smoothing * 10) + weighted)
    logits = torch.randn(64, 4, generator=g) * 4
    labels = torch.randint(0, 4, (64,), generator=g)
    w = torch.tensor([1.5, 0.5, 2.0, 1.0]) if weighted else None
    torch.testing.assert_close(
        weighted_smoothed_ce(logits, labels, w, smoothing),
        previous_loss(logits, labels, w, smoothing),
    )


def test_weights_scale_samples_not_torch_weighted_mean():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 1, 2, 2, 3])
    w = torch.tensor([1.5, 0.5, 2.0, 1.0])
    ours = weighted_smoothed_ce(logits, labels, w, 0.1)
    torch_mean = F.cross_entropy(logits, labels, weight=w, label_smoothing=0.1)
    assert not torch.allclose(ours, torch_mean)


def test_loss_has_gradient():
    logits = torch.randn(4, 4, requires_grad=True)
    weighted_smoothed_ce(logits, torch.tensor([0, 1, 2, 3]), torch.ones(4), 0.1).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_class_weights_balanced():
    w = class_weights([1321, 1339, 1595, 1457])
    assert [round(float(x), 2) for x in w] == [1.08, 1.07, 0.90, 0.98]
    torch.testing.assert_close(class_weights([5, 5, 5, 5]), torch.ones(4))
    assert torch.isfinite(class_weights([0, 3, 3, 3])).all()


def _nll(logits, labels, t):
    return float(F.cross_entropy(logits.double() / t, labels))


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0, 7.0])
def test_fit_temperature_recovers_scale_and_is_a_minimum(scale):
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 4, generator=g) * 2
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).squeeze(1)
    logits = true_logits * scale
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(scale, rel=0.1)
    # a true minimum of the NLL, to well below any grid spacing
    for d in (1.01, 1 / 1.01):
        assert _nll(logits, labels, t) <= _nll(logits, labels, t * d)
    eps = 1e-3
    slope = _nll(logits, labels, t * math.exp(eps)) - _nll(logits, labels, t * math.exp(-eps))
    assert abs(slope / (2 * eps)) < 1e-4
