"""Numpy reference metrics: the evaluation metrics, and the oracle the Keras losses and metrics are tested against.

Label maps are integer arrays of any shape (a slice (H, W), a stack (N, H, W) or a volume (K, J, I));
class 0 is background. A score is computed over all voxels pooled (not averaged per slice), except the UW-Madison
challenge score, whose Dice term is averaged over (slice, class) pairs as the challenge averaged it.
Labels of overlapping classes hold one bit per class (:mod:`ivdseg.data.labels`); the functions that take
``overlapping`` read them so, and a voxel then counts for every class whose bit it holds.
"""

from __future__ import annotations

import math

import numpy as np

from ivdseg.data.labels import class_present

UW_DICE_WEIGHT = 0.4  # UW-Madison GI tract challenge: 0.4 x Dice + 0.6 x (1 - normalised 3D Hausdorff distance)
UW_HAUSDORFF_WEIGHT = 0.6


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


def class_counts(y_true, y_pred, num_classes: int, overlapping: bool = False) -> np.ndarray:
    """:func:`confusion_counts` of label maps in either encoding.

    With ``overlapping`` the maps hold one bit per class and each class is counted on its own mask, so a voxel of
    two classes counts for both; row 0 is then "no class" (label 0).

    Returns:
        int64 array (num_classes, 3): |A & B|, |A|, |B| per class.

    Raises:
        ValueError: shapes differ, a class value outside [0, num_classes), or a bit above the last class.
    """
    if not overlapping:
        return confusion_counts(y_true, y_pred, num_classes)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_pair(y_true, y_pred)
    for label in (y_true, y_pred):
        if label.size and (label.min() < 0 or (label.astype(np.int64) >> (num_classes - 1)).any()):
            raise ValueError(f"overlapping labels must hold bits of classes 1..{num_classes - 1} only")
    out = np.zeros((num_classes, 3), np.int64)
    for c in range(num_classes):
        a = y_true == 0 if c == 0 else class_present(y_true, c, True)
        b = y_pred == 0 if c == 0 else class_present(y_pred, c, True)
        out[c] = np.count_nonzero(a & b), np.count_nonzero(a), np.count_nonzero(b)
    return out


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


def volume_ratio_from_counts(counts: np.ndarray) -> np.ndarray:
    """Predicted over true voxels per class from :func:`confusion_counts`: 1 when a class is drawn as large as it
    is, above 1 when it is over-segmented (e.g. 1.2: 20 % too large), below 1 when under-segmented; NaN where the
    truth is empty. A systematic bias that Dice alone hides: Dice 0.8 may be a mask 50 % too large or a third short."""
    n_true, n_pred = counts[:, 1], counts[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_true > 0, n_pred / np.maximum(n_true, 1), np.nan)


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


# ---------------------------------------------------------------- UW-Madison GI tract challenge (Kaggle, 2022)
def slice_dice(y_true_mask, y_pred_mask) -> np.ndarray:
    """2D Dice of each slice of two (N, H, W) masks, shape (N,); 1 where both slices are empty (the challenge's
    convention: an empty slice predicted empty is perfect), 0 where exactly one is."""
    a = np.asarray(y_true_mask, bool)
    b = np.asarray(y_pred_mask, bool)
    _check_pair(a, b)
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    inter = np.count_nonzero(a & b, axis=1)
    denom = np.count_nonzero(a, axis=1) + np.count_nonzero(b, axis=1)
    return np.where(denom > 0, 2.0 * inter / np.maximum(denom, 1), 1.0)


def hausdorff_distance(y_true_mask, y_pred_mask, spacing=None) -> float:
    """Symmetric Hausdorff distance (the maximum, not a percentile) between the voxels of two masks.

    The sets are the voxel centres of each mask, every voxel, not only its boundary (as the challenge took them):
    max(max_a d(a, B), max_b d(b, A)), so voxels inside both masks add nothing. Computed with Euclidean distance
    transforms (scipy) on the bounding box of both masks: every voxel of either mask lies inside that box, so the
    nearest voxel of the other mask does too and cropping changes no distance.

    Args:
        y_true_mask, y_pred_mask: boolean arrays of one shape, e.g. (N, H, W).
        spacing: voxel size per axis, in the unit wanted (default 1 per voxel).

    Returns:
        The distance in spacing units; NaN when either mask is empty.
    """
    from scipy import ndimage

    a = np.asarray(y_true_mask, bool)
    b = np.asarray(y_pred_mask, bool)
    _check_pair(a, b)
    if not a.any() or not b.any():
        return float("nan")
    if np.array_equal(a, b):
        return 0.0
    union = a | b
    box = []
    for axis in range(union.ndim):
        hit = np.flatnonzero(union.any(axis=tuple(k for k in range(union.ndim) if k != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    a, b = a[tuple(box)], b[tuple(box)]
    to_b = ndimage.distance_transform_edt(~b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~a, sampling=spacing)
    return float(max(to_b[a].max(), to_a[b].max()))


def normalised_hausdorff(y_true_mask, y_pred_mask, spacing=None) -> float:
    """:func:`hausdorff_distance` divided by the diagonal of the whole array (shape x spacing), in [0, 1).

    Empty masks: both empty -> 0 (perfect), exactly one empty -> 1 (worst).
    """
    a = np.asarray(y_true_mask, bool)
    b = np.asarray(y_pred_mask, bool)
    _check_pair(a, b)
    has_a, has_b = bool(a.any()), bool(b.any())
    if not has_a and not has_b:
        return 0.0
    if has_a != has_b:
        return 1.0
    step = np.ones(a.ndim) if spacing is None else np.broadcast_to(np.asarray(spacing, np.float64), (a.ndim,))
    diagonal = math.sqrt(float(np.sum((np.asarray(a.shape) * step) ** 2)))
    return hausdorff_distance(a, b, step) / diagonal


def uw_madison_case(y_true, y_pred, num_classes: int, overlapping: bool = False, spacing=None,
                    classes=None) -> dict[int, tuple[np.ndarray, float]]:
    """The two terms of the UW-Madison GI tract challenge score for one case (one series, a slice stack).

    The Kaggle challenge "UW-Madison GI Tract Image Segmentation" (2022) scored 0.4 x the mean Dice coefficient +
    0.6 x (1 - the 3D Hausdorff distance): Dice per 2D image and class (an image where truth and prediction are
    both empty counting 1), averaged over those (image, class) pairs; the Hausdorff distance per case and class
    between the 3D point sets of the stacked slices (slice depth 1 in the challenge's voxel units), normalised by
    the size of the volume so that it lies in [0, 1]. Here the normalisation divides the maximum distance by the
    diagonal of the (N, H, W) stack, shape x ``spacing``; :func:`normalised_hausdorff` says how empties count.

    Args:
        y_true, y_pred: (N, H, W) label maps, class values or (``overlapping``) class bits.
        num_classes: classes including background (never scored).
        overlapping: the maps' encoding.
        spacing: (slice, row, column) voxel size, any unit (default 1 per voxel); only its ratios matter.
        classes: the class values to score (default 1 .. num_classes - 1).

    Returns:
        {class value: (per-slice 2D Dice (N,), normalised 3D Hausdorff distance)}.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    _check_pair(y_true, y_pred)
    if y_true.ndim != 3:
        raise ValueError(f"a case is an (N, H, W) slice stack, got shape {y_true.shape}")
    out = {}
    for c in (range(1, num_classes) if classes is None else classes):
        a, b = class_present(y_true, c, overlapping), class_present(y_pred, c, overlapping)
        out[int(c)] = slice_dice(a, b), normalised_hausdorff(a, b, spacing)
    return out


def uw_madison_score(dice_2d: float, hausdorff_norm: float) -> float:
    """0.4 x Dice + 0.6 x (1 - normalised Hausdorff distance), the challenge's weighting."""
    return UW_DICE_WEIGHT * dice_2d + UW_HAUSDORFF_WEIGHT * (1.0 - hausdorff_norm)
