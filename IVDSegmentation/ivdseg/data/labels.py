"""Two label encodings, one per kind of dataset, and the conversions between them and per-class masks.

* Exclusive classes (the default: discs, vertebrae, canal): a label map holds one class value per pixel,
  0 = background, value c = ``classes[c]``.
* Overlapping classes (``dataset.json``: ``"overlapping": true``, e.g. the stomach and bowel masks of an RLE table,
  which may claim the same pixel): a label map holds one bit per class, bit c - 1 set where ``classes[c]`` is
  present, 0 = no class. uint8 holds up to :data:`MAX_OVERLAPPING_CLASSES` classes. Nearest-neighbour resizing and
  warping keep the bits as they keep class values, so the same arrays and the same files serve both encodings.
"""

from __future__ import annotations

import numpy as np

MAX_OVERLAPPING_CLASSES = 8  # foreground classes that fit in the bits of a uint8 label map


def bits_from_masks(masks: np.ndarray) -> np.ndarray:
    """(..., K) per-class bool masks (foreground classes only) -> (...) uint8 bit-coded label map."""
    masks = np.asarray(masks, bool)
    if masks.shape[-1] > MAX_OVERLAPPING_CLASSES:
        raise ValueError(f"at most {MAX_OVERLAPPING_CLASSES} overlapping classes fit in a uint8 label map, "
                         f"got {masks.shape[-1]}")
    weights = (1 << np.arange(masks.shape[-1])).astype(np.uint8)
    return (masks.astype(np.uint8) * weights).sum(-1, dtype=np.uint16).astype(np.uint8)


def class_masks(label: np.ndarray, num_classes: int, overlapping: bool) -> np.ndarray:
    """(...) label map -> (..., num_classes) bool, channel 0 = background (no class), channel c = class c.

    Args:
        label: class values (exclusive) or class bits (overlapping).
        num_classes: classes including background.
        overlapping: which encoding ``label`` uses.
    """
    label = np.asarray(label)
    if overlapping:
        fg = [(label.astype(np.uint16) >> (c - 1)) & 1 == 1 for c in range(1, num_classes)]
        return np.stack([label == 0, *fg], axis=-1)
    return label[..., None] == np.arange(num_classes)


def class_present(label: np.ndarray, c: int, overlapping: bool) -> np.ndarray:
    """(...) bool: where class ``c`` (>= 1) is present in a label map of either encoding."""
    label = np.asarray(label)
    return ((label.astype(np.uint16) >> (c - 1)) & 1 == 1) if overlapping else label == c


def labelmap_by_priority(label: np.ndarray, num_classes: int, priority: list[int]) -> np.ndarray:
    """Bit-coded (overlapping) label map -> exclusive class values for formats that hold one class per voxel.

    Where classes overlap, the first of ``priority`` (class values, highest priority first) wins; a class not in
    ``priority`` ranks after those that are, in class order."""
    order = list(priority) + [c for c in range(1, num_classes) if c not in priority]
    out = np.zeros(np.shape(label), np.uint8)
    for c in reversed(order):  # the highest priority is written last
        out[class_present(label, c, True)] = c
    return out
