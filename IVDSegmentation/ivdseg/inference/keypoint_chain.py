"""Decoding keypoint heatmaps as one chain (or tree) of peaks instead of one peak each.

A heatmap of a repeated structure (vertebra corners, disc centres) often has peaks at the neighbouring levels too,
and its arg-max may sit on the wrong one: the points then jump a level, or land far off where the heatmap is flat.
Here each keypoint keeps its few strongest local peaks as candidates, and the set chosen is the one that best fits
both the heatmaps (the negative log of each chosen peak's value) and the shape the training points showed: the
vector from each keypoint's parent to it follows a Gaussian fitted to the training samples (its cost is half the
squared Mahalanobis distance, times a weight that validation chooses). Two structures:

* ``chain``: each keypoint's parent is the one before it in the package's order;
* ``columns``: where the keypoint names come in levels of the same parts (``T1 upper left``, ``T1 upper right``,
  ... ``T2 upper left``), each keypoint's parent is the same part of the level before (each corner hangs from the
  same corner of the vertebra above), and the first level's parts form a chain.

Either is a tree whose parents come before their children, solved exactly by dynamic programming (max-product,
Viterbi for a chain), in K x M x M steps for K keypoints and M candidates.

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


def chain_parents(k: int) -> list[int]:
    """Each keypoint's parent the one before it (the first has none: -1)."""
    return [-1] + list(range(k - 1))


def column_parents(names) -> list[int] | None:
    """Each keypoint's parent the same part of the level before, when the names come in levels of the same parts
    (the first word the level, the rest the part, e.g. ``T1 upper left``); the first level's parts a chain. None
    when they do not, or when each level has one part (a chain already)."""
    split = [str(n).split(maxsplit=1) for n in names]
    if any(len(s) != 2 for s in split):
        return None
    levels = list(dict.fromkeys(s[0] for s in split))
    parts = [s[1] for s in split if s[0] == levels[0]]
    size = len(parts)
    if size < 2 or len(levels) < 2 or [s[1] for s in split] != parts * len(levels) \
            or [s[0] for s in split] != [lv for lv in levels for _ in parts]:
        return None
    return [-1] + [i - 1 if i < size else i - size for i in range(1, len(split))]


def _check_parents(parents, k: int) -> list[int]:
    parents = [int(p) for p in parents]
    if len(parents) != k or parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(parents) if i):
        raise ValueError(f"the decoding's parents are not a tree of {k} keypoints whose parents come first")
    return parents


@dataclass
class ChainPrior:
    """The steps from each keypoint's parent to it that the training samples showed.

    Attributes:
        mean: (K - 1, 2) mean step (row, column) from the parent of keypoint k + 1 to it, network pixels.
        cov: (K - 1, 2, 2) its covariance (with ``FLOOR_PX`` ** 2 added to each variance).
        weight: how much the shape counts against the heatmaps (0: the strongest peak of each keypoint).
        parents: each keypoint's parent, -1 for the first (the root); None: the chain.
    """

    mean: np.ndarray
    cov: np.ndarray
    weight: float = 1.0
    parents: list[int] | None = None

    def __post_init__(self):
        self.parents = _check_parents(chain_parents(len(self.mean) + 1) if self.parents is None else self.parents,
                                      len(self.mean) + 1)

    @property
    def structure(self) -> str:
        return "chain" if self.parents == chain_parents(len(self.parents)) else "tree"

    def to_card(self) -> dict:
        entry = {"method": "chain", "weight": float(self.weight),
                 "step_mean": np.round(self.mean, 4).tolist(), "step_cov": np.round(self.cov, 4).tolist()}
        if self.structure != "chain":
            entry["parents"] = list(self.parents)
        return entry

    @classmethod
    def from_card(cls, card: dict):
        """The card's prior, or None when its keypoints are decoded one peak each (no ``parents``: the chain)."""
        entry = card.get("decode") or {}
        if entry.get("method") != "chain":
            return None
        k = len(card["keypoints"])
        mean, cov = np.asarray(entry["step_mean"], float), np.asarray(entry["step_cov"], float)
        if mean.shape != (k - 1, 2) or cov.shape != (k - 1, 2, 2):
            raise ValueError(f"the card's chain prior fits {len(mean) + 1} keypoints, the model has {k}")
        return cls(mean, cov, float(entry["weight"]), entry.get("parents"))

    def with_weight(self, weight: float) -> "ChainPrior":
        return ChainPrior(self.mean, self.cov, float(weight), self.parents)


def fit_chain_prior(points_rc, weight: float = 1.0, parents=None) -> ChainPrior:
    """The Gaussian of each step from a keypoint's parent to it (``parents``: None for the chain) over (N, K, 2)
    training points (N >= 2, K >= 2)."""
    points = np.asarray(points_rc, float)
    if points.ndim != 3 or points.shape[0] < 2 or points.shape[1] < 2 or not np.isfinite(points).all():
        raise ValueError("a chain prior needs at least two samples of at least two keypoints, none missing")
    parents = _check_parents(chain_parents(points.shape[1]) if parents is None else parents, points.shape[1])
    steps = points[:, 1:] - points[:, parents[1:]]
    mean = steps.mean(axis=0)
    centred = steps - mean
    cov = np.einsum("nki,nkj->kij", centred, centred) / (len(points) - 1) + np.eye(2) * FLOOR_PX ** 2
    return ChainPrior(mean, cov, weight, parents)


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
    """The peaks that best fit (H, W, K) heatmaps and ``prior`` together (a chain or a tree).

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
    # leaves to root: each keypoint's cost per candidate, with its subtree's best given that candidate
    cost = [-np.log(np.clip(v, 1e-6, 1.0)) for v in values]
    best_child = [None] * k  # per child: its best candidate for each candidate of its parent
    for n in range(k - 1, 0, -1):
        parent = prior.parents[n]
        step = candidates[n][None, :, :] - candidates[parent][:, None, :] - prior.mean[n - 1]
        total = prior.weight * 0.5 * np.einsum("ijx,xy,ijy->ij", step, precision[n - 1], step) + cost[n][None, :]
        best_child[n] = np.argmin(total, axis=1)
        cost[parent] = cost[parent] + total.min(axis=1)
    chosen = [int(np.argmin(cost[0]))] + [0] * (k - 1)
    for n in range(1, k):  # parents come first
        chosen[n] = int(best_child[n][chosen[prior.parents[n]]])
    return (np.array([candidates[n][i] for n, i in enumerate(chosen)]),
            np.array([values[n][i] for n, i in enumerate(chosen)], float))
