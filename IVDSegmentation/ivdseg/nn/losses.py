"""Keras losses and metrics for one-hot segmentation, shapes (B, H, W, C), channel 0 = background.

Each mirrors a numpy reference in :mod:`ivdseg.metrics` and is tested against it.

Partial labels: a sample whose source does not label some classes carries -1 in those channels of ``y_true``
(every pixel), and in the background channel too, since its background pixels may be any of them
(``make_dataset(available=...)`` in :mod:`ivdseg.nn.augment`). The losses then leave those channels out of the
Dice and score the pixels outside every known class by the summed probability of background and the unknown
classes (a marginal cross-entropy), so a class a source lacks is never taught as background. With fully labelled
samples both losses equal the plain ones.

Overlapping classes (sigmoid outputs, ``y_true`` multi-hot with channel 0 = no class): the soft Dice is the same
per-channel Dice; the cross-entropy term becomes a binary cross-entropy per channel over the known channels
(:class:`DiceBinaryCrossEntropyLoss`), and the metrics threshold each channel at 0.5 instead of taking the argmax.
"""

from __future__ import annotations

import keras
from keras import ops


def marginal_crossentropy(y_true, y_pred, epsilon=1e-7):
    """(B, H, W) cross-entropy of probabilities ``y_pred`` against ``y_true`` that may hold unknown (-1) channels:
    a pixel outside every known class counts as the union of the unknown ones (background included)."""
    known = ops.cast(y_true >= 0, y_pred.dtype)
    truth = ops.maximum(y_true, 0.0)
    outside = 1.0 - ops.sum(truth, axis=-1, keepdims=True)  # 1 where no known class claims the pixel
    target = truth + outside * (1.0 - known)
    return -ops.log(ops.clip(ops.sum(target * y_pred, axis=-1), epsilon, 1.0))


@keras.saving.register_keras_serializable(package="ivdseg", name="SoftDiceLoss")
class SoftDiceLoss(keras.losses.Loss):
    """1 - mean soft Dice over classes, pooled over the batch and pixels (see metrics.soft_dice_per_class).

    Args:
        include_background: average over channel 0 too (default False: foreground only).
        smooth: added to numerator and denominator; keeps classes absent from a batch from dominating.
    """

    def __init__(self, include_background=False, smooth=1e-5, name="soft_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.include_background = include_background
        self.smooth = smooth

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        known = ops.cast(y_true >= 0, y_pred.dtype)
        truth = ops.maximum(y_true, 0.0)
        axes = (0, 1, 2)
        inter = ops.sum(truth * y_pred * known, axis=axes)
        denom = ops.sum(truth * known, axis=axes) + ops.sum(y_pred * known, axis=axes)
        dice = (2.0 * inter + self.smooth) / (denom + self.smooth)
        weight = ops.cast(ops.max(known, axis=axes) > 0, y_pred.dtype)  # classes known in some sample
        if not self.include_background:
            dice, weight = dice[1:], weight[1:]
        mean = ops.sum(dice * weight) / ops.maximum(ops.sum(weight), 1.0)
        # A batch-level loss: broadcast it to one value per sample so Keras' reduction keeps it.
        return ops.ones_like(y_pred[:, 0, 0, 0]) * (1.0 - mean)

    def get_config(self):
        return {**super().get_config(), "include_background": self.include_background, "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="ivdseg", name="DiceCrossEntropyLoss")
class DiceCrossEntropyLoss(keras.losses.Loss):
    """Soft Dice loss + ``ce_weight`` x categorical cross-entropy (mean over pixels)."""

    def __init__(self, include_background=False, smooth=1e-5, ce_weight=1.0, name="dice_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.include_background = include_background
        self.smooth = smooth
        self.ce_weight = ce_weight
        self._dice = SoftDiceLoss(include_background, smooth)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, y_pred.dtype)
        return self._dice.call(y_true, y_pred) + self.ce_weight * ops.mean(marginal_crossentropy(y_true, y_pred),
                                                                           axis=(1, 2))

    def get_config(self):
        return {**super().get_config(), "include_background": self.include_background,
                "smooth": self.smooth, "ce_weight": self.ce_weight}


@keras.saving.register_keras_serializable(package="ivdseg", name="DiceBinaryCrossEntropyLoss")
class DiceBinaryCrossEntropyLoss(keras.losses.Loss):
    """For overlapping classes: soft Dice loss + ``ce_weight`` x binary cross-entropy, averaged over the known
    channels (a channel marked -1 for a sample counts neither way)."""

    def __init__(self, include_background=False, smooth=1e-5, ce_weight=1.0, name="dice_bce", **kwargs):
        super().__init__(name=name, **kwargs)
        self.include_background = include_background
        self.smooth = smooth
        self.ce_weight = ce_weight
        self._dice = SoftDiceLoss(include_background, smooth)

    def call(self, y_true, y_pred, epsilon=1e-7):
        y_true = ops.cast(y_true, y_pred.dtype)
        known = ops.cast(y_true >= 0, y_pred.dtype)
        truth = ops.maximum(y_true, 0.0)
        p = ops.clip(y_pred, epsilon, 1.0 - epsilon)
        bce = -(truth * ops.log(p) + (1.0 - truth) * ops.log(1.0 - p)) * known
        per_sample = ops.sum(bce, axis=(1, 2, 3)) / ops.maximum(ops.sum(known, axis=(1, 2, 3)), 1.0)
        return self._dice.call(y_true, y_pred) + self.ce_weight * per_sample

    def get_config(self):
        return {**super().get_config(), "include_background": self.include_background,
                "smooth": self.smooth, "ce_weight": self.ce_weight}


class _OverlapMetric(keras.metrics.Metric):
    """Hard overlap of one class (argmax, or with ``multilabel`` its own channel above 0.5), accumulated over all
    pixels seen since the last reset."""

    def __init__(self, class_id, name, multilabel=False, **kwargs):
        super().__init__(name=name, **kwargs)
        self.class_id = int(class_id)
        self.multilabel = bool(multilabel)
        self.inter = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="inter")
        self.n_true = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="n_true")
        self.n_pred = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="n_pred")

    def update_state(self, y_true, y_pred, sample_weight=None):
        # Only where the class is known (a sample whose source lacks it marks it -1: neither truth nor error).
        channel = ops.cast(y_true[..., self.class_id], "float32")
        t = ops.cast(channel > 0.5, "float32")
        known = ops.cast(channel >= 0, "float32")
        if self.multilabel:
            p = ops.cast(y_pred[..., self.class_id] > 0.5, "float32") * known
        else:
            p = ops.cast(ops.equal(ops.argmax(y_pred, axis=-1), self.class_id), "float32") * known
        self.inter.assign_add(ops.sum(t * p))
        self.n_true.assign_add(ops.sum(t))
        self.n_pred.assign_add(ops.sum(p))

    def reset_state(self):
        for v in (self.inter, self.n_true, self.n_pred):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "class_id": self.class_id, "multilabel": self.multilabel}


@keras.saving.register_keras_serializable(package="ivdseg", name="DiceMetric")
class DiceMetric(_OverlapMetric):
    """Dice of class ``class_id`` (0 when truth and prediction are both empty; numpy says NaN)."""

    def __init__(self, class_id=1, name=None, multilabel=False, **kwargs):
        super().__init__(class_id, name or f"dice_{class_id}", multilabel, **kwargs)

    def result(self):
        denom = self.n_true + self.n_pred
        return ops.where(denom > 0, 2.0 * self.inter / ops.maximum(denom, 1.0), 0.0)


@keras.saving.register_keras_serializable(package="ivdseg", name="IoUMetric")
class IoUMetric(_OverlapMetric):
    """IoU of class ``class_id`` (0 when both are empty)."""

    def __init__(self, class_id=1, name=None, multilabel=False, **kwargs):
        super().__init__(class_id, name or f"iou_{class_id}", multilabel, **kwargs)

    def result(self):
        union = self.n_true + self.n_pred - self.inter
        return ops.where(union > 0, self.inter / ops.maximum(union, 1.0), 0.0)


LOSSES = {"dice": SoftDiceLoss, "dice_ce": DiceCrossEntropyLoss}
OVERLAPPING_LOSSES = {"dice": SoftDiceLoss, "dice_ce": DiceBinaryCrossEntropyLoss}


def get_loss(name: str, include_background=False, overlapping=False) -> keras.losses.Loss:
    """Loss by name ("dice" or "dice_ce"); for ``overlapping`` classes (sigmoid outputs) "dice_ce" is Dice plus
    binary cross-entropy per class."""
    try:
        return (OVERLAPPING_LOSSES if overlapping else LOSSES)[name](include_background=include_background)
    except KeyError:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}") from None
