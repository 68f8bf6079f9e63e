"""How much a user's corrections cost: mean radial error before and after 1, 2, 3 corrections, the network revising
the other points (the interactive mechanism) against the same corrections made by hand only (the fixed points move,
nothing else). And Cobb angles from vertebra corners.

The simulated user fixes, each round, the worst point of the current prediction among those not fixed yet, by
putting it at its true position, as the seed design's evaluation does.
"""

from __future__ import annotations

import numpy as np

from ivdseg.inference.keypoints import hint_channels, predict_points


def _native_errors(pred_in, truth_in, scale_rc, spacing_rc) -> np.ndarray:
    """(N, K) radial errors in mm where the spacing is known, else in image pixels; inputs in network pixels."""
    delta = (np.asarray(pred_in) - np.asarray(truth_in)) / np.asarray(scale_rc)[:, None, :]
    spacing = np.where(np.isfinite(spacing_rc), spacing_rc, 1.0)
    return np.linalg.norm(delta * spacing[:, None, :], axis=-1)


def correction_curves(run, images, truth, scale_rc, spacing_rc, sigma_px: float, rounds: int = 3,
                      chain=None) -> dict:
    """Per-sample mean radial errors after 0..``rounds`` corrections, both ways.

    Args:
        run: (N, H, W, C + K) network input -> (N, H, W, K) heatmaps (a backend's ``predict``).
        images: (N, H, W, C) network images; truth (N, K, 2) true points in network pixels.
        scale_rc, spacing_rc: (N, 2) letterbox scale and mm per image pixel (NaN: errors in image pixels).
        chain: the package's :class:`~ivdseg.inference.keypoint_chain.ChainPrior`, or None (one peak each).

    Returns:
        {"model": (rounds + 1, N), "manual": (rounds + 1, N)} mean radial error per sample, and "first": (N, K, 2)
        the unhinted prediction in network pixels.
    """
    images, truth = np.asarray(images, np.float32), np.asarray(truth, float)
    n, k = truth.shape[:2]
    shape = images.shape[1:3]

    def predict(fixed):
        points = predict_points(run, images, np.stack([hint_channels(f, shape, sigma_px) for f in fixed]), chain,
                                fixed)
        known = np.isfinite(fixed[..., 0])
        points[known] = fixed[known]  # a fixed point stays where the user put it
        return points

    def fix_worst(points, fixed):
        errors = np.linalg.norm(points - truth, axis=-1)
        errors[np.isfinite(fixed[..., 0])] = -np.inf
        worst = np.argmax(errors, axis=1)
        fixed[np.arange(n), worst] = truth[np.arange(n), worst]

    model, manual = [], []
    fixed = np.full((n, k, 2), np.nan)
    hand = predict(fixed)
    first = hand.copy()
    hand_fixed = np.full((n, k, 2), np.nan)
    for r in range(rounds + 1):
        points = predict(fixed) if r else hand.copy()
        model.append(_native_errors(points, truth, scale_rc, spacing_rc).mean(axis=1))
        manual.append(_native_errors(hand, truth, scale_rc, spacing_rc).mean(axis=1))
        if r < rounds and r < k:
            fix_worst(points, fixed)
            fix_worst(hand, hand_fixed)
            hand[np.isfinite(hand_fixed[..., 0])] = hand_fixed[np.isfinite(hand_fixed[..., 0])]
    return {"model": np.array(model), "manual": np.array(manual), "first": first}


# ---------------------------------------------------------------- Cobb angles
def _line_angles_deg(corners_xy: np.ndarray) -> np.ndarray:
    """(V,) angle of each vertebra's mid-line (from the middle of its left edge to the middle of its right edge),
    corners (V, 4, 2) as (x, y) in the order upper left, upper right, lower left, lower right."""
    left = (corners_xy[:, 0] + corners_xy[:, 2]) / 2.0
    right = (corners_xy[:, 1] + corners_xy[:, 3]) / 2.0
    d = right - left
    return np.degrees(np.arctan2(d[:, 1], d[:, 0]))


def cobb_angles(points_xy) -> np.ndarray:
    """Three Cobb angles in degrees from the corners of the vertebrae, top vertebra first (V x 4 points, (x, y) image
    coordinates, y downwards), in the column order of the AASCE ``angles.csv``: the largest curve, the curve above
    it, the curve below it.

    The largest curve is the largest angle between two vertebra mid-lines (left-edge middle to right-edge middle);
    its end vertebrae split the spine, and the curve above (below) is the largest angle between the upper (lower)
    end vertebra and a vertebra above (below) it. On the 40 AASCE training images here, from their true corners,
    this agrees with ``angles.csv`` to 0.00 / 0.51 / 2.95 degrees (mean absolute difference; SMAPE 2.35 %).
    """
    corners = np.asarray(points_xy, float).reshape(-1, 4, 2)
    theta = _line_angles_deg(corners)
    diff = np.abs(theta[:, None] - theta[None, :])
    upper, lower = np.unravel_index(int(np.argmax(np.triu(diff))), diff.shape)
    upper, lower = min(upper, lower), max(upper, lower)
    main = float(diff[upper, lower])
    proximal = float(np.max(np.abs(theta[:upper + 1] - theta[upper]))) if upper > 0 else 0.0
    distal = float(np.max(np.abs(theta[lower:] - theta[lower]))) if lower < len(theta) - 1 else 0.0
    return np.array([main, proximal, distal])


def smape(predicted, truth) -> float:
    """Symmetric mean absolute percentage error (%) over all angles of all images: the AASCE challenge's measure."""
    p, t = np.asarray(predicted, float).ravel(), np.asarray(truth, float).ravel()
    return float(100.0 * np.sum(np.abs(p - t)) / max(float(np.sum(p + t)), 1e-9))


# ---------------------------------------------------------------- decoding, chosen on validation
CHAIN_WEIGHTS = (0.3, 1.0, 3.0)


def choose_decoding(run, train_points, val_images, val_points, sigma_px: float, rounds: int = 3,
                    weights=CHAIN_WEIGHTS, names=None, structures=("chain", "columns")):
    """Whether the validation samples prefer the heatmaps decoded as a chain or, where the keypoint ``names`` come
    in levels of the same parts, as columns (each part tied to the same part of the level before), and with which
    weight, to one peak each: the way with the lowest mean radial error over 0..``rounds`` simulated corrections,
    the network revising, in network pixels (as training chose its epoch).

    Args:
        train_points: (N, K, 2) training points in network pixels, to which the steps are fitted.
        structures: the ways to tie the keypoints that may be tried (columns only where the names allow).

    Returns:
        (the chosen :class:`~ivdseg.inference.keypoint_chain.ChainPrior` or None, the card's "decode" entry).
    """
    from ivdseg.inference.keypoint_chain import column_parents, fit_chain_prior

    n = len(val_images)
    ones, no_spacing = np.ones((n, 2)), np.full((n, 2), np.nan)

    def score(chain):
        curves = correction_curves(run, val_images, val_points, ones, no_spacing, sigma_px, rounds, chain)
        return float(curves["model"].mean())

    candidates = {"peaks": None}
    if np.asarray(train_points).shape[1] >= 2:  # one keypoint has no chain
        if "chain" in structures:
            prior = fit_chain_prior(train_points)
            candidates.update({f"chain {w:g}": prior.with_weight(w) for w in weights})
        columns = None if names is None or "columns" not in structures else column_parents(names)
        if columns is not None:
            prior = fit_chain_prior(train_points, parents=columns)
            candidates.update({f"columns {w:g}": prior.with_weight(w) for w in weights})
    scores = {name: score(chain) for name, chain in candidates.items()}
    best = min(scores, key=scores.get)  # a tie keeps the first: one peak each
    how = {"validation_mre_px": {k: round(v, 3) for k, v in scores.items()},
           "chosen_by": f"validation: mean radial error over 0..{rounds} corrections, the network revising "
                        f"({n} samples)"}
    chosen = candidates[best]
    if chosen is None:
        return None, {"method": "peaks", **how}
    return chosen, {**chosen.to_card(), "structure": best.split()[0], "fitted_on_samples": int(len(train_points)),
                    **how}
