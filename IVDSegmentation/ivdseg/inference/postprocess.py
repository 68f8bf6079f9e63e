"""Post-processing of a predicted labelmap, as the model card enables it.

``min_component_fraction``: per class, 3D connected components smaller than this fraction of the
class's largest component are set to background (isolated false positives far from the spine).
The card turns it on only when it raised validation Dice (see Resources/recipes).
"""

from __future__ import annotations

import numpy as np


def drop_small_components(labels: np.ndarray, min_fraction: float, class_values=None) -> np.ndarray:
    """Removes, per class, 3D components smaller than ``min_fraction`` x the largest one.

    Args:
        labels: integer labelmap (K, J, I) or a slice stack (N, H, W); adjacent slices are connected.
        min_fraction: in [0, 1); 0 keeps everything.
        class_values: the classes to clean (default: every non-zero value present).

    Returns:
        A cleaned copy of ``labels``.
    """
    from scipy import ndimage

    if not 0.0 <= min_fraction < 1.0:
        raise ValueError(f"min_fraction must lie in [0, 1), got {min_fraction}")
    out = np.array(labels, copy=True)
    if min_fraction == 0.0:
        return out
    values = class_values if class_values is not None else [v for v in np.unique(out) if v != 0]
    structure = ndimage.generate_binary_structure(out.ndim, 1)
    for v in values:
        comp, n = ndimage.label(out == v, structure=structure)
        if n < 2:
            continue
        sizes = np.bincount(comp.reshape(-1))[1:]
        small = np.flatnonzero(sizes < min_fraction * sizes.max()) + 1
        out[np.isin(comp, small)] = 0
    return out


def drop_small_components_bits(labels: np.ndarray, min_fraction: float, num_classes: int) -> np.ndarray:
    """:func:`drop_small_components` for bit-coded labels of overlapping classes (:mod:`ivdseg.data.labels`): each
    class's mask is cleaned on its own and only its bit is cleared."""
    from ivdseg.data.labels import class_present

    out = np.array(labels, copy=True)
    for c in range(1, num_classes):
        mask = class_present(out, c, True)
        kept = drop_small_components(mask.astype(np.uint8), min_fraction, [1]).astype(bool)
        out[mask & ~kept] &= np.uint8(~(1 << (c - 1)) & 0xFF)
    return out


def apply_card(labels: np.ndarray, card: dict) -> np.ndarray:
    """Applies the post-processing the card enables (none when the card says nothing); labels are class values, or
    class bits when the card's classes overlap."""
    post = card.get("postprocessing") or {}
    if post.get("enabled") and post.get("min_component_fraction", 0) > 0:
        if card.get("overlapping"):
            return drop_small_components_bits(labels, float(post["min_component_fraction"]), len(card["classes"]) + 1)
        return drop_small_components(labels, float(post["min_component_fraction"]))
    return labels
