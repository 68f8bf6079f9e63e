"""Slice-by-slice prediction shared by evaluation and segmentation.

A stack of sagittal slices (N, H, W) at native resolution is normalised as the card says, resized
to the model's input, predicted in batches, and its probabilities resized back before the argmax,
so labels are decided at native resolution.
"""

from __future__ import annotations

import numpy as np

from ivdseg.data.labels import bits_from_masks
from ivdseg.data.preprocess import normalize_slices, resize_probabilities, resize_stack, with_context


def context_slices(card: dict) -> int:
    """Neighbouring slices on each side that the card's network takes as extra channels (0: the slice alone)."""
    return int(card.get("context_slices", 0) or 0)


def is_overlapping(card: dict) -> bool:
    """Whether the card's classes may overlap (sigmoid outputs, bit-coded labels: :mod:`ivdseg.data.labels`)."""
    return bool(card.get("overlapping", False))


def prepare_slices(stack: np.ndarray, card: dict) -> np.ndarray:
    """(N, H, W) native slices of one series, in order -> (N, S, S, K) float32 network input, normalised per the
    card; K = 1, or 2 x ``context_slices`` + 1 when the card's network sees each slice with its neighbours."""
    size = int(card["input_size"])
    resized = resize_stack(np.asarray(stack, np.float32), size, mode=resize_mode(card))
    norm = card["normalization"]
    if norm.get("method") != "percentile":
        raise ValueError(f"unknown normalization {norm!r}")
    return with_context(normalize_slices(resized, tuple(norm["percentiles"])), context_slices(card))


def resize_mode(card: dict) -> str:
    """How the card's network saw its slices: "stretch" (cards before the option existed) or "pad"."""
    return (card.get("preprocessing") or {}).get("resize", "stretch")


TTA_SCALES = (0.9, 1.0, 1.1)


def with_tta(predict, card: dict):
    """``predict`` itself, or, when the card enables test-time augmentation (``card["tta"]``), a callable that
    averages its probabilities over the card's in-plane scales (each slice zoomed about its centre, the
    probabilities zoomed back, every pixel averaged over the passes that saw it). No flips: a mirrored sagittal slice
    shows an anatomy no scan has."""
    tta = card.get("tta") or {}
    if not tta.get("enabled"):
        return predict
    return scaled_predict(predict, tuple(float(s) for s in tta.get("scales", TTA_SCALES)))


def scaled_predict(predict, scales):
    """The test-time augmentation of :func:`with_tta` over ``scales``."""
    import cv2

    def run(batch):
        size = batch.shape[1]
        centre = ((size - 1) / 2.0, (size - 1) / 2.0)
        total = weight = None
        for scale in scales:
            if scale == 1.0:
                prob = np.asarray(predict(batch), np.float32)
                seen = np.ones(prob.shape[:3] + (1,), np.float32)
            else:
                forward = cv2.getRotationMatrix2D(centre, 0.0, scale)
                back = cv2.invertAffineTransform(forward)
                zoomed = np.stack([np.stack([cv2.warpAffine(b[..., k], forward, (size, size), flags=cv2.INTER_LINEAR)
                                             for k in range(b.shape[-1])], axis=-1) for b in batch])
                raw = np.asarray(predict(zoomed), np.float32)
                prob = np.stack([np.stack([cv2.warpAffine(p[..., c], back, (size, size), flags=cv2.INTER_LINEAR)
                                           for c in range(p.shape[-1])], axis=-1) for p in raw])
                ones = cv2.warpAffine(np.ones((size, size), np.float32), back, (size, size), flags=cv2.INTER_LINEAR)
                seen = np.broadcast_to(ones[None, ..., None], prob.shape[:3] + (1,)).astype(np.float32)
            # A zoomed-back probability near the edge of what a pass saw is already attenuated by the interpolation
            # with the zeros outside it, as its share ``seen`` is: summing both and dividing keeps probabilities.
            total = prob if total is None else total + prob
            weight = seen if weight is None else weight + seen
        return total / np.maximum(weight, 1e-6)

    return run


def keras_predict(model):
    """A backend-style predict callable for a Keras model (called directly: no retracing per batch size)."""
    return lambda batch: np.asarray(model(batch, training=False))


def predict_probabilities(predict, batch_input: np.ndarray, batch_size=16, progress=None) -> np.ndarray:
    """(N, S, S, K) -> (N, S, S, C) probabilities, ``batch_size`` slices per ``predict`` call.

    Args:
        predict: callable (B, S, S, K) -> (B, S, S, C), e.g. a backend's or :func:`keras_predict`.
        progress: called as progress(done_slices, total_slices, "infer") after each batch.
    """
    if not len(batch_input):
        raise ValueError("no slices to predict")
    out = []
    for start in range(0, len(batch_input), batch_size):
        out.append(np.asarray(predict(batch_input[start:start + batch_size])))
        if progress:
            progress(min(start + batch_size, len(batch_input)), len(batch_input), "infer")
    return np.concatenate(out)


def probabilities_to_labels(prob: np.ndarray, shape_hw, mode: str = "stretch", entropy=False, overlapping=False):
    """(N, S, S, C) probabilities -> (N, H, W) uint8 labels at native size (resize, then decide); ``mode`` as the
    card's :func:`resize_mode`.

    Exclusive classes: the argmax. ``overlapping`` (sigmoid) classes: every class whose probability exceeds 0.5,
    one bit each (:mod:`ivdseg.data.labels`; channel 0, "no class", is not used).
    With ``entropy``, also (N, H, W) float16 predictive entropy per pixel normalised to [0, 1]: by log(C) for
    exclusive classes (0: certain, 1: every class equally likely), for overlapping ones the mean over the classes
    of their binary entropy by log(2)."""
    labels = np.empty((len(prob), *shape_hw), np.uint8)
    uncertainty = np.empty((len(prob), *shape_hw), np.float16) if entropy else None
    scale = 1.0 / np.log(prob.shape[-1]) if prob.shape[-1] > 1 else 0.0
    for i, p in enumerate(prob):
        native = resize_probabilities(p, shape_hw, mode)
        if overlapping:
            labels[i] = bits_from_masks(native[..., 1:] > 0.5)
        else:
            labels[i] = np.argmax(native, axis=-1)
        if entropy:
            q = np.clip(native, 1e-7, 1.0 - 1e-7)
            if overlapping:
                fg = q[..., 1:]
                per_class = -(fg * np.log(fg) + (1 - fg) * np.log(1 - fg)) / np.log(2.0)
                uncertainty[i] = np.clip(per_class.mean(-1), 0.0, 1.0)
            else:
                uncertainty[i] = np.clip(-(q * np.log(q)).sum(-1) * scale, 0.0, 1.0)
    return (labels, uncertainty) if entropy else labels


def predict_stack(model, stack: np.ndarray, card: dict, batch_size=16) -> np.ndarray:
    """Labels (N, H, W) uint8 for the native slices (N, H, W) of one series (class values, or class bits for a
    card whose classes overlap)."""
    prob = predict_probabilities(with_tta(keras_predict(model), card), prepare_slices(stack, card), batch_size)
    return probabilities_to_labels(prob, stack.shape[1:], resize_mode(card), overlapping=is_overlapping(card))
