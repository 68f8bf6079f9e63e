"""Keypoints as heatmaps: the hint channels a user's fixed points become, and heatmaps decoded to sub-pixel points.

Pixel coordinates are (row, column) of the network's input grid, pixel centres at integers. A point in mm on a
slice of known spacing converts with :func:`mm_to_pixels` / :func:`pixels_to_mm` (row and column spacing may differ).
"""

from __future__ import annotations

import numpy as np


def gaussian(size: int, centre_rc, sigma_px: float) -> np.ndarray:
    """(size, size) float32 Gaussian of peak 1 at ``centre_rc`` (sub-pixel allowed)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    r, c = (float(v) for v in centre_rc)
    return np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2.0 * sigma_px ** 2)).astype(np.float32)


def hint_channels(points_rc, size: int, sigma_px: float = 2.0) -> np.ndarray:
    """(size, size, K) hint channels: a Gaussian at each fixed point, zeros for a keypoint without a hint.

    Args:
        points_rc: (K, 2) pixel (row, column) per keypoint; NaN rows are keypoints the user did not fix.
    """
    points = np.asarray(points_rc, float).reshape(-1, 2)
    out = np.zeros((size, size, len(points)), np.float32)
    for k, p in enumerate(points):
        if np.all(np.isfinite(p)):
            out[..., k] = gaussian(size, p, sigma_px)
    return out


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peaks of (H, W, K) heatmaps: the arg-max refined by a parabola through it and its neighbours
    along each axis (exact for a sampled Gaussian's log, close for the Gaussian itself).

    Returns:
        ((K, 2) float (row, column), (K,) peak values).
    """
    h, w, k = heatmaps.shape
    points = np.zeros((k, 2))
    peaks = np.zeros(k)
    for n in range(k):
        m = heatmaps[..., n].astype(np.float64)
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        peaks[n] = m[r, c]
        offsets = []
        for axis, (i, size) in enumerate(((r, h), (c, w))):
            if 0 < i < size - 1:
                before = m[r - 1, c] if axis == 0 else m[r, c - 1]
                after = m[r + 1, c] if axis == 0 else m[r, c + 1]
                logs = np.log(np.maximum([before, m[r, c], after], 1e-12))
                denom = logs[0] - 2 * logs[1] + logs[2]
                offsets.append(0.5 * (logs[0] - logs[2]) / denom if denom < 0 else 0.0)
            else:
                offsets.append(0.0)
        points[n] = (r + np.clip(offsets[0], -0.5, 0.5), c + np.clip(offsets[1], -0.5, 0.5))
    return points, peaks


def mm_to_pixels(points_mm, spacing_rc) -> np.ndarray:
    """(K, 2) (row, column) mm from the grid's first pixel centre -> pixels."""
    return np.asarray(points_mm, float) / np.asarray(spacing_rc, float)


def pixels_to_mm(points_rc, spacing_rc) -> np.ndarray:
    """(K, 2) pixels -> (row, column) mm from the grid's first pixel centre."""
    return np.asarray(points_rc, float) * np.asarray(spacing_rc, float)


def radial_errors(predicted, truth) -> np.ndarray:
    """(K,) Euclidean distance of each predicted point from its truth (same units as the points)."""
    return np.linalg.norm(np.asarray(predicted, float) - np.asarray(truth, float), axis=1)
