"""Slice preprocessing shared by export, training and inference: resizing and intensity normalisation.

MRI has no absolute intensity scale, so every slice is scaled by its own percentiles; the model
card records the percentiles so inference repeats exactly what training saw.
"""

from __future__ import annotations

import cv2
import numpy as np

DEFAULT_PERCENTILES = (0.5, 99.5)
# How a slice becomes the network's square input: "stretch" squashes it to the square (the aspect ratio is lost,
# differently for every acquisition matrix); "pad" pads it to a square first (with its darkest value), so a disc
# keeps its shape whatever the scanner's field of view.
RESIZE_MODES = ("stretch", "pad")


def pad_widths(shape_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) padding that centres an (H, W) slice in a square of side max(H, W)."""
    h, w = shape_hw
    side = max(h, w)
    return ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2)


def _pad(slice_hw: np.ndarray, value) -> np.ndarray:
    (top, bottom), (left, right) = pad_widths(slice_hw.shape)
    return np.pad(slice_hw, ((top, bottom), (left, right)), constant_values=value)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes one slice (H, W) to (size, size) float32: area averaging down, bilinear up."""
    h, w = image.shape
    shrink = size < h or size < w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(np.asarray(image, np.float32), (size, size), interpolation=interp)


def resize_label(label: np.ndarray, size: int) -> np.ndarray:
    """Resizes one label slice (H, W) to (size, size) uint8 with nearest neighbour (no new values)."""
    return cv2.resize(np.asarray(label, np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)


def resize_stack(stack: np.ndarray, size: int, is_label=False, mode: str = "stretch") -> np.ndarray:
    """Resizes each slice of (N, H, W) to (N, size, size); ``mode`` "pad" pads it to a square first (labels with
    background, images with the slice's darkest value)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    fn = resize_label if is_label else resize_image
    out_dtype = np.uint8 if is_label else np.float32
    out = np.empty((stack.shape[0], size, size), out_dtype)
    for i, s in enumerate(stack):
        if mode == "pad":
            s = _pad(s, 0 if is_label else s.min())
        out[i] = fn(s, size)
    return out


def resize_probabilities(prob: np.ndarray, shape_hw: tuple[int, int], mode: str = "stretch") -> np.ndarray:
    """Resizes class probabilities (S, S, C) back to (H, W, C) bilinearly, channel by channel; with ``mode`` "pad",
    to the padded square first, whose padding is then cut off."""
    h, w = shape_hw
    (top, bottom), (left, right) = pad_widths(shape_hw) if mode == "pad" else ((0, 0), (0, 0))
    full_h, full_w = h + top + bottom, w + left + right
    out = np.empty((h, w, prob.shape[-1]), np.float32)
    for c in range(prob.shape[-1]):
        full = cv2.resize(prob[..., c].astype(np.float32), (full_w, full_h), interpolation=cv2.INTER_LINEAR)
        out[..., c] = full[top:top + h, left:left + w]
    return out


def normalize_slices(stack: np.ndarray, percentiles=DEFAULT_PERCENTILES) -> np.ndarray:
    """Scales each slice of (N, H, W) so its low/high percentiles map to 0/1, clipped to [0, 1].

    A constant slice becomes all zeros. Returns float32 (N, H, W).
    """
    stack = np.asarray(stack, np.float32)
    if stack.ndim != 3:
        raise ValueError(f"expected a stack (N, H, W), got shape {stack.shape}")
    flat = stack.reshape(stack.shape[0], -1)
    lo, hi = np.percentile(flat, percentiles, axis=1).astype(np.float32)  # float64 bounds would promote the slices
    scale = np.where(hi > lo, hi - lo, np.float32(1.0))
    out = (stack - lo[:, None, None]) / scale[:, None, None]
    out[hi <= lo] = 0.0
    return np.clip(out, 0.0, 1.0)


def one_hot(label: np.ndarray, num_classes: int, background=True) -> np.ndarray:
    """(..., ) integer labels -> (..., C) uint8 one-hot; without background, channel 0 is dropped."""
    eye = np.eye(num_classes, dtype=np.uint8)
    out = eye[np.asarray(label, np.intp)]
    return out if background else out[..., 1:]


MAX_CONTEXT_SLICES = 4  # neighbours on each side; more would mix in anatomy a slice-thickness away


def with_context(stack: np.ndarray, context: int) -> np.ndarray:
    """(N, H, W) slices of one series, in order -> (N, H, W, 2 * context + 1): each slice with its ``context``
    neighbours on each side as channels, from the lowest index to the highest (the slice itself in the middle).
    A neighbour beyond either end of the series repeats the nearest end slice.

    Only slices of one series are neighbours: call it per series, never on slices of several concatenated."""
    stack = np.asarray(stack)
    if context < 0:
        raise ValueError(f"context must be at least 0, got {context}")
    index = np.clip(np.arange(len(stack))[:, None] + np.arange(-context, context + 1)[None, :], 0, len(stack) - 1)
    return np.moveaxis(stack[index], 1, -1)
