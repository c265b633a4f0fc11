"""Label smoothing, class-weighted cross-entropy, class weights and temperature fitting."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainmri.train.loop import class_weights, fit_temperature, smooth_targets, weighted_smoothed_ce


def test_smooth_targets_values():
    t = smooth_targets(torch.tensor([0, 3, 1]), 4, 0.1)
    expected = torch.full((3, 4), 0.025)
    expected[0, 0] = expected[1, 3] = expected[2, 1] = 0.925
    torch.testing.assert_close(t, expected)
    torch.testing.assert_close(t.sum(1), torch.ones(3))


def test_no_smoothing_is_one_hot():
    labels = torch.tensor([2, 0])
    torch.testing.assert_close(smooth_targets(labels, 4, 0.0), F.one_hot(labels, 4).float())


def test_unweighted_equals_torch_label_smoothing():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 4, generator=g) * 3
    labels = torch.randint(0, 4, (16,), generator=g)
    ours = weighted_smoothed_ce(logits, labels, None, 0.1)
    ref = F.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(ours, ref)


def test_weighted_equals_hand_computed_mean():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 4, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 0, 0, 1, 2, 2, 3])
    w = torch.tensor([1.5, 0.5, 2.0, 1.0])
    eps, k = 0.1, 4
    by_hand = []
    for i in range(10):
        logp = torch.log_softmax(logits[i], 0)
        target = torch.full((k,), eps / k)
        target[labels[i]] = 1 - eps + eps / k
        by_hand.append(w[labels[i]] * -(target * logp).sum())
    expected = torch.stack(by_hand).mean()
    torch.testing.assert_close(weighted_smoothed_ce(logits, labels, w, eps), expected)
    # and weights really matter (not the weighted mean torch uses for reduction='mean')
    assert not torch.allclose(weighted_smoothed_ce(logits, labels, w, eps), expected / w.mean())


def test_loss_has_gradient():
    logits = torch.randn(4, 4, requires_grad=True)
    weighted_smoothed_ce(logits, torch.tensor([0, 1, 2, 3]), torch.ones(4), 0.1).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_class_weights_balanced():
    w = class_weights([1321, 1339, 1595, 1457])
    assert [round(float(x), 2) for x in w] == [1.08, 1.07, 0.90, 0.98]
    assert w.dtype == torch.float32
    torch.testing.assert_close(class_weights([5, 5, 5, 5]), torch.ones(4))
    assert torch.isfinite(class_weights([0, 3, 3, 3])).all()


def test_fit_temperature_recovers_scale():
    g = torch.Generator().manual_seed(0)
    true_logits = torch.randn(3000, 4, generator=g) * 2
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=g).squeeze(1)
    # an over-confident model: logits 3x too large -> T close to 3
    assert fit_temperature(true_logits * 3, labels) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.1)
