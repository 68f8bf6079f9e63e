"""Slice-by-slice prediction shared by evaluation and segmentation.

A stack of sagittal slices (N, H, W) at native resolution is normalised as the card says, resized
to the model's input, predicted in batches, and its probabilities resized back before the argmax,
so labels are decided at native resolution.
"""

from __future__ import annotations

import numpy as np

from .preprocess import normalize_slices, resize_probabilities, resize_stack


def prepare_slices(stack: np.ndarray, card: dict) -> np.ndarray:
    """(N, H, W) native slices -> (N, S, S, 1) float32 network input, normalised per the card."""
    size = int(card["input_size"])
    resized = resize_stack(np.asarray(stack, np.float32), size)
    norm = card["normalization"]
    if norm.get("method") != "percentile":
        raise ValueError(f"unknown normalization {norm!r}")
    return normalize_slices(resized, tuple(norm["percentiles"]))[..., None]


def predict_probabilities(model, batch_input: np.ndarray, batch_size=16) -> np.ndarray:
    """(N, S, S, 1) -> (N, S, S, C) probabilities, batch by batch (model called directly, no retracing)."""
    out = []
    for start in range(0, len(batch_input), batch_size):
        out.append(np.asarray(model(batch_input[start:start + batch_size], training=False)))
    if not out:
        return np.zeros((0, *model.output_shape[1:]), np.float32)
    return np.concatenate(out)


def probabilities_to_labels(prob: np.ndarray, shape_hw) -> np.ndarray:
    """(N, S, S, C) probabilities -> (N, H, W) uint8 labels at native size (resize, then argmax)."""
    labels = np.empty((len(prob), *shape_hw), np.uint8)
    for i, p in enumerate(prob):
        labels[i] = np.argmax(resize_probabilities(p, shape_hw), axis=-1)
    return labels


def predict_stack(model, stack: np.ndarray, card: dict, batch_size=16) -> np.ndarray:
    """Labels (N, H, W) uint8 for native slices (N, H, W)."""
    prob = predict_probabilities(model, prepare_slices(stack, card), batch_size)
    return probabilities_to_labels(prob, stack.shape[1:])
