"""Numpy reference metrics: the evaluation metrics, and the oracle the Keras losses and metrics are tested against.

Label maps are integer arrays of any shape (a slice (H, W), a stack (N, H, W) or a volume (K, J, I));
class 0 is background. A score is computed over all voxels pooled (not averaged per slice).
"""

from __future__ import annotations

import numpy as np


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    if y_true.shape != y_pred.shape:
        raise ValueError(f"label maps differ in shape: {y_true.shape} vs {y_pred.shape}")


def confusion_counts(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Per-class (intersection, true voxels, predicted voxels), pooled over all voxels.

    Args:
        y_true, y_pred: integer label maps of one shape, values in [0, num_classes).
        num_classes: number of classes including background.

    Returns:
        int64 array (num_classes, 3): columns are |A & B|, |A|, |B| with A = truth, B = prediction.
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    _check_pair(y_true, y_pred)
    t = y_true.reshape(-1).astype(np.int64)
    p = y_pred.reshape(-1).astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    both = np.bincount(t[t == p], minlength=num_classes)
    return np.stack(
        [both, np.bincount(t, minlength=num_classes), np.bincount(p, minlength=num_classes)], axis=1
    ).astype(np.int64)


def known_counts(y_true, y_pred, num_classes: int, known) -> np.ndarray:
    """:func:`confusion_counts` of a stack (N, ...) whose slices may lack classes: ``known`` (N, C) bool says
    which classes each slice's source labels; a class counts (truth and prediction) only on the slices that
    know it, so it is NaN, not 0, where no slice does."""
    y_true, y_pred, known = np.asarray(y_true), np.asarray(y_pred), np.asarray(known, bool)
    _check_pair(y_true, y_pred)
    if known.shape != (len(y_true), num_classes):
        raise ValueError(f"known {known.shape} must be (N, C) = {(len(y_true), num_classes)}")
    total = np.zeros((num_classes, 3), np.int64)
    for row in np.unique(known, axis=0):
        sel = (known == row).all(axis=1)
        total += confusion_counts(y_true[sel], y_pred[sel], num_classes) * row[:, None]
    return total


def dice_from_counts(counts: np.ndarray) -> np.ndarray:
    """Dice per class from :func:`confusion_counts`; NaN where truth and prediction are both empty."""
    inter, n_true, n_pred = counts[:, 0], counts[:, 1], counts[:, 2]
    denom = n_true + n_pred
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), np.nan)


def iou_from_counts(counts: np.ndarray) -> np.ndarray:
    """IoU (Jaccard) per class from :func:`confusion_counts`; NaN where both are empty."""
    inter, n_true, n_pred = counts[:, 0], counts[:, 1], counts[:, 2]
    union = n_true + n_pred - inter
    return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def dice_per_class(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Dice = 2|A & B| / (|A| + |B|) per class, shape (num_classes,); NaN where both are empty."""
    return dice_from_counts(confusion_counts(y_true, y_pred, num_classes))


def iou_per_class(y_true, y_pred, num_classes: int) -> np.ndarray:
    """IoU = |A & B| / |A | B| per class, shape (num_classes,); NaN where both are empty."""
    return iou_from_counts(confusion_counts(y_true, y_pred, num_classes))


def soft_dice_per_class(y_true_onehot, y_prob, smooth: float = 1e-5) -> np.ndarray:
    """Soft Dice per class on probabilities, pooled over every axis but the last.

    Args:
        y_true_onehot: (..., C) one-hot truth.
        y_prob: (..., C) probabilities.
        smooth: added to numerator and denominator.

    Returns:
        (C,) float64: (2 sum(t p) + smooth) / (sum(t) + sum(p) + smooth).
    """
    t = np.asarray(y_true_onehot, np.float64).reshape(-1, np.shape(y_true_onehot)[-1])
    p = np.asarray(y_prob, np.float64).reshape(t.shape)
    return (2 * (t * p).sum(0) + smooth) / (t.sum(0) + p.sum(0) + smooth)


def hausdorff_95(y_true_mask, y_pred_mask, spacing=None) -> float:
    """95th-percentile symmetric Hausdorff distance between two binary masks, in spacing units.

    Uses boundary voxels and Euclidean distance transforms (scipy). Returns NaN when either mask is empty.

    Args:
        y_true_mask, y_pred_mask: boolean arrays of one shape.
        spacing: voxel size per axis (default 1).
    """
    from scipy import ndimage

    a = np.asarray(y_true_mask, bool)
    b = np.asarray(y_pred_mask, bool)
    _check_pair(a, b)
    if not a.any() or not b.any():
        return float("nan")
    border_a = a & ~ndimage.binary_erosion(a)
    border_b = b & ~ndimage.binary_erosion(b)
    dist_to_a = ndimage.distance_transform_edt(~border_a, sampling=spacing)
    dist_to_b = ndimage.distance_transform_edt(~border_b, sampling=spacing)
    d = np.concatenate([dist_to_b[border_a], dist_to_a[border_b]])
    return float(np.percentile(d, 95))
