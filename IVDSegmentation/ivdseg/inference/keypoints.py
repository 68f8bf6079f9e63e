"""Keypoints as heatmaps: the hint channels a user's fixed points become, and heatmaps decoded to sub-pixel points.

Pixel coordinates are (row, column) of the network's input grid, pixel centres at integers. A point in mm on a
slice of known spacing converts with :func:`mm_to_pixels` / :func:`pixels_to_mm` (row and column spacing may differ).
"""

from __future__ import annotations

import numpy as np


def _shape(size) -> tuple[int, int]:
    """(H, W) from a side or an (H, W) pair."""
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


def gaussian(size, centre_rc, sigma_px: float) -> np.ndarray:
    """(H, W) float32 Gaussian of peak 1 at ``centre_rc`` (sub-pixel allowed); ``size`` is H = W or (H, W)."""
    h, w = _shape(size)
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    r, c = (float(v) for v in centre_rc)
    return np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2.0 * sigma_px ** 2)).astype(np.float32)


def hint_channels(points_rc, size, sigma_px: float = 2.0) -> np.ndarray:
    """(H, W, K) hint channels (``size`` is H = W or (H, W)): a Gaussian at each fixed point, zeros for a keypoint without a hint.

    Args:
        points_rc: (K, 2) pixel (row, column) per keypoint; NaN rows are keypoints the user did not fix.
    """
    points = np.asarray(points_rc, float).reshape(-1, 2)
    out = np.zeros((*_shape(size), len(points)), np.float32)
    for k, p in enumerate(points):
        if np.all(np.isfinite(p)):
            out[..., k] = gaussian(size, p, sigma_px)
    return out


def refine_peak(m: np.ndarray, r: int, c: int) -> tuple[float, float]:
    """Sub-pixel (row, column) of the peak of an (H, W) map at pixel (r, c): a parabola through the log of it and its
    neighbours along each axis (exact for a sampled Gaussian), the shift kept within half a pixel."""
    h, w = m.shape
    offsets = []
    for axis, (i, size) in enumerate(((r, h), (c, w))):
        if 0 < i < size - 1:
            before = m[r - 1, c] if axis == 0 else m[r, c - 1]
            after = m[r + 1, c] if axis == 0 else m[r, c + 1]
            logs = np.log(np.maximum(np.array([before, m[r, c], after], np.float64), 1e-12))
            denom = logs[0] - 2 * logs[1] + logs[2]
            offsets.append(0.5 * (logs[0] - logs[2]) / denom if denom < 0 else 0.0)
        else:
            offsets.append(0.0)
    return r + float(np.clip(offsets[0], -0.5, 0.5)), c + float(np.clip(offsets[1], -0.5, 0.5))


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel peaks of (H, W, K) heatmaps: each map's arg-max, refined by :func:`refine_peak`.

    Returns:
        ((K, 2) float (row, column), (K,) peak values).
    """
    k = heatmaps.shape[-1]
    points = np.zeros((k, 2))
    peaks = np.zeros(k)
    for n in range(k):
        m = heatmaps[..., n].astype(np.float64)
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        peaks[n] = m[r, c]
        points[n] = refine_peak(m, r, c)
    return points, peaks


def predict_points(run, images, hints, chain=None, fixed_rc=None) -> np.ndarray:
    """(N, K, 2) decoded points of ``images`` (N, H, W, C) with ``hints`` (N, H, W, K); ``run`` maps the stacked
    input (N, H, W, C + K) to heatmaps (N, H, W, K): a Keras model or a backend's ``predict``.

    With ``chain`` (a :class:`~ivdseg.inference.keypoint_chain.ChainPrior`) the heatmaps are decoded as one chain,
    the points the user fixed (``fixed_rc``, (N, K, 2), NaN where none) being their keypoints' only candidates;
    without, each keypoint is its heatmap's strongest peak.
    """
    heatmaps = np.asarray(run(np.concatenate([images, hints], axis=-1).astype(np.float32)))
    if chain is None:
        return np.stack([decode_heatmaps(h)[0] for h in heatmaps])
    from ivdseg.inference.keypoint_chain import chain_decode

    fixed = np.full((len(heatmaps), heatmaps.shape[-1], 2), np.nan) if fixed_rc is None else fixed_rc
    return np.stack([chain_decode(h, chain, f)[0] for h, f in zip(heatmaps, fixed)])


def mm_to_pixels(points_mm, spacing_rc) -> np.ndarray:
    """(K, 2) (row, column) mm from the grid's first pixel centre -> pixels."""
    return np.asarray(points_mm, float) / np.asarray(spacing_rc, float)


def pixels_to_mm(points_rc, spacing_rc) -> np.ndarray:
    """(K, 2) pixels -> (row, column) mm from the grid's first pixel centre."""
    return np.asarray(points_rc, float) * np.asarray(spacing_rc, float)


def radial_errors(predicted, truth) -> np.ndarray:
    """(K,) Euclidean distance of each predicted point from its truth (same units as the points)."""
    return np.linalg.norm(np.asarray(predicted, float) - np.asarray(truth, float), axis=1)


class Letterbox:
    """How an (h, w) image becomes a network input of (H, W) pixels without changing its aspect ratio: scaled by one
    factor to fit, then centred and padded. Points map both ways with pixel centres at integers.

    Attributes:
        scale_rc: network pixels per image pixel along rows and columns (equal up to rounding of the size).
        offset_rc: where the image's first pixel centre lands in the network grid.
        resized_hw: (rows, columns) of the image once scaled, before padding.
    """

    def __init__(self, image_hw, input_hw):
        h, w = (int(v) for v in image_hw)
        H, W = (int(v) for v in input_hw)
        if min(h, w, H, W) < 1:
            raise ValueError(f"Letterbox needs positive sizes, got image {image_hw} and input {input_hw}")
        factor = min(H / h, W / w)
        self.image_hw, self.input_hw = (h, w), (H, W)
        self.resized_hw = (max(1, min(H, int(round(h * factor)))), max(1, min(W, int(round(w * factor)))))
        self.scale_rc = np.array([self.resized_hw[0] / h, self.resized_hw[1] / w])
        pad = ((H - self.resized_hw[0]) // 2, (W - self.resized_hw[1]) // 2)
        # cv2.resize maps pixel centres: x' + 0.5 = (x + 0.5) * scale
        self.offset_rc = np.array(pad, float) + 0.5 * self.scale_rc - 0.5

    def image(self, image_hw: np.ndarray, fill=None) -> np.ndarray:
        """(h, w) image -> (H, W) float32 network input (area averaging down, bilinear up; padded with ``fill``,
        by default the image's darkest value)."""
        import cv2

        image_hw = np.asarray(image_hw, np.float32)
        rh, rw = self.resized_hw
        shrink = rh < image_hw.shape[0] or rw < image_hw.shape[1]
        resized = cv2.resize(image_hw, (rw, rh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        out = np.full(self.input_hw, float(image_hw.min()) if fill is None else fill, np.float32)
        top, left = (self.input_hw[0] - rh) // 2, (self.input_hw[1] - rw) // 2
        out[top:top + rh, left:left + rw] = resized
        return out

    def to_input(self, points_rc) -> np.ndarray:
        """(K, 2) image pixels (row, column) -> network pixels."""
        return np.asarray(points_rc, float) * self.scale_rc + self.offset_rc

    def to_image(self, points_rc) -> np.ndarray:
        """(K, 2) network pixels -> image pixels."""
        return (np.asarray(points_rc, float) - self.offset_rc) / self.scale_rc
