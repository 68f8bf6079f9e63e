"""Numpy reference metrics on known values, and the Keras losses and metrics tested against them."""

import math

import numpy as np
import pytest

from ivdseg.eval import metrics

# 3x3 maps: truth has 4 voxels of class 1, prediction 3, overlap 2 -> Dice 2*2/(4+3) = 4/7, IoU 2/5.
T = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]])
P = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 0]])


def test_dice_and_iou_known_values():
    dice = metrics.dice_per_class(T, P, 2)
    iou = metrics.iou_per_class(T, P, 2)
    assert dice[1] == pytest.approx(4 / 7)
    assert iou[1] == pytest.approx(2 / 5)
    # background: truth 5, prediction 6, overlap 4 -> 8/11
    assert dice[0] == pytest.approx(8 / 11)


def test_empty_class_is_nan_and_perfect_is_one():
    d = metrics.dice_per_class(T, T, 3)
    assert d[1] == 1.0 and math.isnan(d[2])


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        metrics.dice_per_class(T, P[:2], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics.dice_per_class(T + 1, P, 2)


def test_hausdorff_95_known_value():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)
    assert metrics.hausdorff_95(a, a) == 0.0
    assert metrics.hausdorff_95(a, b, spacing=(1.0, 2.0)) == pytest.approx(6.0)
    assert math.isnan(metrics.hausdorff_95(a, np.zeros_like(a)))


@pytest.fixture
def losses():
    """The Keras losses and metrics; only the tests that take this fixture skip without Keras (the numpy
    reference metrics above always run)."""
    pytest.importorskip("keras")
    from ivdseg.nn import losses

    return losses


def onehot(x, n):
    return np.eye(n, dtype=np.float32)[x]


def test_keras_dice_metric_matches_numpy_over_batches(losses):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (4, 8, 8))
    pred = rng.integers(0, 3, (4, 8, 8))
    ref = metrics.dice_per_class(truth, pred, 3)
    ref_iou = metrics.iou_per_class(truth, pred, 3)
    for c in (1, 2):
        m, j = losses.DiceMetric(c), losses.IoUMetric(c)
        for b in range(4):  # accumulated batch by batch = pooled
            m.update_state(onehot(truth[b:b + 1], 3), onehot(pred[b:b + 1], 3))
            j.update_state(onehot(truth[b:b + 1], 3), onehot(pred[b:b + 1], 3))
        assert float(m.result()) == pytest.approx(ref[c], abs=1e-6)
        assert float(j.result()) == pytest.approx(ref_iou[c], abs=1e-6)
        m.reset_state()
        assert float(m.result()) == 0.0


def test_soft_dice_loss_matches_numpy_reference(losses):
    rng = np.random.default_rng(1)
    truth = onehot(rng.integers(0, 3, (2, 5, 5)), 3)
    prob = rng.random((2, 5, 5, 3)).astype(np.float32)
    prob /= prob.sum(-1, keepdims=True)
    ref = metrics.soft_dice_per_class(truth, prob)
    loss_fg = float(losses.SoftDiceLoss()(truth, prob))
    loss_all = float(losses.SoftDiceLoss(include_background=True)(truth, prob))
    assert loss_fg == pytest.approx(1 - ref[1:].mean(), abs=1e-6)
    assert loss_all == pytest.approx(1 - ref.mean(), abs=1e-6)


def test_dice_loss_is_zero_for_perfect_prediction_and_ce_adds(losses):
    truth = onehot(np.array([[[0, 1], [1, 2]]]), 3)
    assert float(losses.SoftDiceLoss()(truth, truth)) == pytest.approx(0.0, abs=1e-6)
    prob = np.full_like(truth, 1 / 3)
    ce = -math.log(1 / 3)
    dice = float(losses.SoftDiceLoss()(truth, prob))
    assert float(losses.DiceCrossEntropyLoss()(truth, prob)) == pytest.approx(dice + ce, abs=1e-5)


def test_get_loss(losses):
    assert isinstance(losses.get_loss("dice_ce"), losses.DiceCrossEntropyLoss)
    with pytest.raises(ValueError, match="loss must be one of"):
        losses.get_loss("focal")
