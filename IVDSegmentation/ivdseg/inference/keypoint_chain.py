"""Decoding keypoint heatmaps as one chain instead of one peak each.

A heatmap of a repeated structure (vertebra corners, disc centres) often has peaks at the neighbouring levels too,
and its arg-max may sit on the wrong one: the points then jump a level, or land far off where the heatmap is flat.
Here each keypoint keeps its few strongest local peaks as candidates, and the set chosen is the one that best fits
both the heatmaps (the negative log of each chosen peak's value) and the shape the training points showed: the
vector from each keypoint to the next in the package's order follows a Gaussian fitted to the training samples
(its cost is half the squared Mahalanobis distance, times a weight that validation chooses). A chain is solved
exactly by dynamic programming (Viterbi), in K x M x M steps for K keypoints and M candidates.

A point the user fixed is the only candidate of its keypoint, so a correction also pulls its neighbours' choice of
peak, on top of what the network itself made of the hint.

Positions are (row, column) pixels of the network's input grid, as in :mod:`ivdseg.inference.keypoints`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ivdseg.inference.keypoints import refine_peak

MOST_CANDIDATES = 8  # peaks kept per keypoint
PEAK_RADIUS = 3  # a candidate is the largest value within this many pixels
FLOOR_PX = 2.0  # added (squared) to each variance of the fitted steps: no step is ever certain


@dataclass
class ChainPrior:
    """The steps between consecutive keypoints that the training samples showed.

    Attributes:
        mean: (K - 1, 2) mean step (row, column) from keypoint k to k + 1, network pixels.
        cov: (K - 1, 2, 2) its covariance (with ``FLOOR_PX`` ** 2 added to each variance).
        weight: how much the shape counts against the heatmaps (0: the strongest peak of each keypoint).
    """

    mean: np.ndarray
    cov: np.ndarray
    weight: float = 1.0

    def to_card(self) -> dict:
        return {"method": "chain", "weight": float(self.weight),
                "step_mean": np.round(self.mean, 4).tolist(), "step_cov": np.round(self.cov, 4).tolist()}

    @classmethod
    def from_card(cls, card: dict):
        """The card's chain prior, or None when its keypoints are decoded one peak each."""
        entry = card.get("decode") or {}
        if entry.get("method") != "chain":
            return None
        k = len(card["keypoints"])
        mean, cov = np.asarray(entry["step_mean"], float), np.asarray(entry["step_cov"], float)
        if mean.shape != (k - 1, 2) or cov.shape != (k - 1, 2, 2):
            raise ValueError(f"the card's chain prior fits {len(mean) + 1} keypoints, the model has {k}")
        return cls(mean, cov, float(entry["weight"]))

    def with_weight(self, weight: float) -> "ChainPrior":
        return ChainPrior(self.mean, self.cov, float(weight))


def fit_chain_prior(points_rc, weight: float = 1.0) -> ChainPrior:
    """The Gaussian of each step between consecutive keypoints of (N, K, 2) training points (N >= 2, K >= 2)."""
    points = np.asarray(points_rc, float)
    if points.ndim != 3 or points.shape[0] < 2 or points.shape[1] < 2 or not np.isfinite(points).all():
        raise ValueError("a chain prior needs at least two samples of at least two keypoints, none missing")
    steps = points[:, 1:] - points[:, :-1]
    mean = steps.mean(axis=0)
    centred = steps - mean
    cov = np.einsum("nki,nkj->kij", centred, centred) / (len(points) - 1) + np.eye(2) * FLOOR_PX ** 2
    return ChainPrior(mean, cov, weight)


def peak_candidates(heatmap, most: int = MOST_CANDIDATES, radius: int = PEAK_RADIUS):
    """The ``most`` strongest local maxima of an (H, W) heatmap, strongest first, each refined to sub-pixel.

    Returns:
        ((M, 2) (row, column), (M,) values), M >= 1: the arg-max is always the first.
    """
    import cv2

    m = np.ascontiguousarray(heatmap, np.float32)
    largest = cv2.dilate(m, np.ones((2 * radius + 1,) * 2, np.uint8), borderType=cv2.BORDER_REPLICATE)
    local = (m >= largest) & (m > 0)
    rows, cols = np.nonzero(local)
    order = np.argsort(-m[rows, cols], kind="stable")[:most]
    if not len(order):  # a flat or empty map: its arg-max alone
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        rows, cols, order = np.array([r]), np.array([c]), np.array([0])
    points = np.array([refine_peak(m, rows[i], cols[i]) for i in order])
    return points, m[rows[order], cols[order]].astype(np.float64)


def chain_decode(heatmaps, prior: ChainPrior, fixed_rc=None) -> tuple[np.ndarray, np.ndarray]:
    """The chain of peaks that best fits (H, W, K) heatmaps and ``prior``.

    Args:
        fixed_rc: (K, 2) points the user fixed, NaN rows for the others: a fixed point is its keypoint's only
            candidate (its value counts as 1).

    Returns:
        ((K, 2) (row, column), (K,) the heatmap's value at each chosen peak; 1 for a fixed point).
    """
    heatmaps = np.asarray(heatmaps)
    k = heatmaps.shape[-1]
    if len(prior.mean) != k - 1:
        raise ValueError(f"the chain prior fits {len(prior.mean) + 1} keypoints, the heatmaps are {k}")
    fixed = np.full((k, 2), np.nan) if fixed_rc is None else np.asarray(fixed_rc, float)
    maps = np.ascontiguousarray(np.moveaxis(heatmaps, -1, 0), np.float32)  # one contiguous (H, W) map a keypoint
    candidates, values = [], []
    for n in range(k):
        points, peak_values = ((fixed[n][None], np.ones(1)) if np.isfinite(fixed[n]).all()
                               else peak_candidates(maps[n]))
        candidates.append(points)
        values.append(peak_values)
    precision = np.linalg.inv(prior.cov)
    cost = -np.log(np.clip(values[0], 1e-6, 1.0))
    back = []
    for n in range(1, k):
        step = candidates[n][None, :, :] - candidates[n - 1][:, None, :] - prior.mean[n - 1]
        pair = 0.5 * np.einsum("ijx,xy,ijy->ij", step, precision[n - 1], step)
        total = cost[:, None] + prior.weight * pair
        back.append(np.argmin(total, axis=0))
        cost = total.min(axis=0) - np.log(np.clip(values[n], 1e-6, 1.0))
    chosen = [int(np.argmin(cost))]
    for pointers in reversed(back):
        chosen.append(int(pointers[chosen[-1]]))
    chosen.reverse()
    return (np.array([candidates[n][i] for n, i in enumerate(chosen)]),
            np.array([values[n][i] for n, i in enumerate(chosen)], float))
