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


def test_volume_ratio_known_values():
    ratio = metrics.volume_ratio_from_counts(metrics.confusion_counts(T, P, 3))
    assert ratio[1] == pytest.approx(3 / 4)  # 3 voxels drawn where there are 4: 25 % short
    assert ratio[0] == pytest.approx(6 / 5)
    assert math.isnan(ratio[2])  # no truth: no size to compare with
    assert metrics.volume_ratio_from_counts(metrics.confusion_counts(P, T, 2))[1] == pytest.approx(4 / 3)


def test_empty_class_is_nan_and_perfect_is_one():
    d = metrics.dice_per_class(T, T, 3)
    assert d[1] == 1.0 and math.isnan(d[2])


def test_bad_inputs():
    with pytest.raises(ValueError, match="shape"):
        metrics.dice_per_class(T, P[:2], 2)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        metrics.dice_per_class(T + 1, P, 2)


def test_class_counts_of_both_encodings():
    # exclusive: the same as confusion_counts
    assert metrics.class_counts(T, P, 2).tolist() == metrics.confusion_counts(T, P, 2).tolist()
    # overlapping: T's class-1 pixels also hold class 2 on the first row (bits 0b11); P has class 2 alone at (1, 2)
    t_bits = np.where(T == 1, 0b01, 0) | np.array([[0b10, 0b10, 0], [0, 0, 0], [0, 0, 0]])
    p_bits = np.where(P == 1, 0b01, 0) | np.array([[0b10, 0, 0], [0, 0, 0], [0, 0, 0]])
    counts = metrics.class_counts(t_bits, p_bits, 3, overlapping=True)
    assert counts[1].tolist() == [2, 4, 3]  # class 1 exactly as in T and P: Dice 4/7 again
    assert counts[2].tolist() == [1, 2, 1]  # class 2 counted on its own bit, where class 1 is too
    assert counts[0].tolist() == [4, 5, 6]  # "no class"
    assert metrics.dice_from_counts(counts)[2] == pytest.approx(2 / 3)


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


# ---------------------------------------------------------------- partial labels (a source lacks a class)
def test_known_counts_leave_a_class_out_where_a_slice_does_not_label_it():
    truth = np.array([[[1, 2]], [[1, 0]]])  # slice 0 labels classes 1 and 2; slice 1 only class 1
    pred = np.array([[[1, 2]], [[1, 2]]])  # slice 1 predicts class 2 where its source says nothing
    known = np.array([[True, True, True], [False, True, False]])
    counts = metrics.known_counts(truth, pred, 3, known)
    assert counts[1].tolist() == [2, 2, 2]  # class 1 on both slices
    assert counts[2].tolist() == [1, 1, 1]  # class 2 on slice 0 only: the prediction on slice 1 is no error
    assert counts[0].tolist() == [0, 0, 0]  # background is unknown on slice 1 and absent on slice 0
    none = metrics.known_counts(truth, pred, 3, np.array([[True, True, False]] * 2))
    assert math.isnan(metrics.dice_from_counts(none)[2])  # never labelled: unknown, not 0


def test_masked_dice_loss_on_known_values(losses):
    # Two 1x2 samples, classes background / disc / vertebra. Sample 1's source lacks the vertebra class.
    prob = np.array([[[[0.2, 0.3, 0.5], [0.1, 0.8, 0.1]]],
                     [[[0.6, 0.1, 0.3], [0.2, 0.7, 0.1]]]], np.float32)
    truth = np.array([[[[0, 0, 1], [0, 1, 0]]],
                      [[[-1, 0, -1], [-1, 1, -1]]]], np.float32)
    s = 1e-5
    # disc: known in both samples: inter 0.8 + 0.7, truth 2, predicted 0.3 + 0.8 + 0.1 + 0.7
    disc = (2 * 1.5 + s) / (2 + 1.9 + s)
    # vertebra: sample 0 only: inter 0.5, truth 1, predicted 0.5 + 0.1
    vert = (2 * 0.5 + s) / (1 + 0.6 + s)
    loss = float(np.mean(losses.SoftDiceLoss()(truth, prob)))
    assert loss == pytest.approx(1 - (disc + vert) / 2, abs=1e-6)
    # Had sample 1's vertebra channel been taken as background (0), its 0.3 + 0.1 would count against it.
    wrong = (2 * 0.5 + s) / (1 + 1.0 + s)
    assert loss < 1 - (disc + wrong) / 2


def test_marginal_crossentropy_on_known_values(losses):
    prob = np.array([[[[0.2, 0.3, 0.5], [0.1, 0.8, 0.1]]]], np.float32)
    lacking = np.array([[[[-1, 0, -1], [-1, 1, -1]]]], np.float32)
    ce = np.asarray(losses.marginal_crossentropy(lacking, prob))
    # pixel 0 is outside the known disc class: background or vertebra, 0.2 + 0.5; pixel 1 is disc, 0.8
    assert ce[0, 0].tolist() == pytest.approx([-math.log(0.7), -math.log(0.8)], abs=1e-6)
    full = np.array([[[[1, 0, 0], [0, 1, 0]]]], np.float32)  # fully labelled: the usual cross-entropy
    import keras
    plain = np.asarray(keras.losses.categorical_crossentropy(full, prob))
    assert np.asarray(losses.marginal_crossentropy(full, prob)) == pytest.approx(plain, abs=1e-6)


def test_masked_losses_equal_the_plain_ones_when_every_class_is_labelled(losses):
    rng = np.random.default_rng(3)
    truth = onehot(rng.integers(0, 3, (2, 6, 6)), 3)
    prob = rng.random((2, 6, 6, 3)).astype(np.float32)
    prob /= prob.sum(-1, keepdims=True)
    ref = metrics.soft_dice_per_class(truth, prob)
    import keras
    ce = float(np.mean(keras.losses.categorical_crossentropy(truth, prob)))
    total = float(np.mean(losses.DiceCrossEntropyLoss()(truth, prob)))
    assert total == pytest.approx(1 - ref[1:].mean() + ce, abs=1e-5)


def test_keras_dice_metric_ignores_a_class_where_it_is_unknown(losses):
    truth = np.array([[[[0, 0, 1], [0, 1, 0]]], [[[-1, 0, -1], [-1, 1, -1]]]], np.float32)
    pred = onehot(np.array([[[2, 1]], [[2, 2]]]), 3)  # sample 1 predicts vertebra where it is unknown
    m = losses.DiceMetric(2)
    m.update_state(truth, pred)
    assert float(m.result()) == pytest.approx(1.0)  # sample 0: perfect; sample 1 does not count
    d = losses.DiceMetric(1)
    d.update_state(truth, pred)
    assert float(d.result()) == pytest.approx(2 * 1 / (2 + 1))  # disc: truth 2 pixels, predicted 1, overlap 1
