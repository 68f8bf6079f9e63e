"""Training a hint-conditioned keypoint network by simulating the user who corrects it.

Two ways, both from the seed design, selectable and comparable:

* ``"revise"``: predict, find the worst point of each sample (or one of its few worst, at random), give its true
  position as a hint, predict again, and learn on the last pass: the network learns what a correction means for the
  points it did not get. Each batch makes a random number of such rounds (0 to ``max_rounds``), so the network also
  keeps learning the first, unhinted prediction.
* ``"prompt"``: give hints before the only prediction, to a share of the samples, each hinted sample getting a random
  number of true points: the network learns what a hint means from the start.

Heatmap loss: binary cross-entropy (what the seed settled on), averaged over pixels and keypoints. The loop runs
batch by batch in Python (a prediction is needed before each revised step); it is meant for the small keypoint
sets of this project, not for throughput.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ivdseg.inference.keypoints import decode_heatmaps, gaussian, hint_channels

MODES = ("revise", "prompt")


@dataclass
class KeypointTrainConfig:
    mode: str = "revise"
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    sigma_px: float = 3.0
    worst_of: int = 1  # "revise": the hint goes to one of the worst ``worst_of`` points, at random
    max_rounds: int = 2  # "revise": correction rounds per batch, 0..max_rounds
    prompt_share: float = 0.5  # "prompt": the share of samples that get hints
    seed: int = 0


def heatmap_targets(points_rc, size: int, sigma_px: float) -> np.ndarray:
    """(N, size, size, K) Gaussians at the true points (N, K, 2)."""
    points = np.asarray(points_rc, float)
    out = np.zeros((len(points), size, size, points.shape[1]), np.float32)
    for n, sample in enumerate(points):
        for k, p in enumerate(sample):
            out[n, ..., k] = gaussian(size, p, sigma_px)
    return out


def predict_points(model, images, hints) -> np.ndarray:
    """(N, K, 2) decoded points of ``images`` (N, S, S, C) with ``hints`` (N, S, S, K)."""
    heatmaps = np.asarray(model(np.concatenate([images, hints], axis=-1), training=False))
    return np.stack([decode_heatmaps(h)[0] for h in heatmaps])


def _revise_hints(model, images, truth, cfg, rng):
    """Hints of the "revise" mode: round after round, each sample's worst point of the current prediction (one of
    the ``worst_of`` worst among those not fixed yet) is fixed; the hints of the last round are returned."""
    size, k = images.shape[1], truth.shape[1]
    fixed = np.full(truth.shape, np.nan)
    hints = np.zeros((len(images), size, size, k), np.float32)
    for _ in range(int(rng.integers(0, cfg.max_rounds + 1))):
        errors = np.linalg.norm(predict_points(model, images, hints) - truth, axis=-1)  # (N, K)
        for n, e in enumerate(errors):
            e = np.where(np.isnan(fixed[n, :, 0]), e, -np.inf)  # a fixed point stays fixed
            worst = np.argsort(-e)[:max(1, min(cfg.worst_of, int(np.isfinite(e).sum())))]
            pick = int(rng.choice(worst))
            fixed[n, pick] = truth[n, pick]
        hints = np.stack([hint_channels(h, size, cfg.sigma_px) for h in fixed])
    return hints


def _prompt_hints(images, truth, cfg, rng):
    """Hints of the "prompt" mode: a random number of true points for a share of the samples, none for the rest."""
    size, k = images.shape[1], truth.shape[1]
    hints = np.full(truth.shape, np.nan)
    for n in range(len(images)):
        if rng.random() < cfg.prompt_share:
            chosen = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
            hints[n, chosen] = truth[n, chosen]
    return np.stack([hint_channels(h, size, cfg.sigma_px) for h in hints])


def fit(model, images: np.ndarray, points_rc: np.ndarray, cfg: KeypointTrainConfig, on_epoch=None) -> list[float]:
    """Trains ``model`` (a ``keypoint_unet`` with hints) on images (N, S, S, C) and true points (N, K, 2).

    Returns:
        the mean loss of each epoch; ``on_epoch(epoch, loss)`` is called after each.

    Raises:
        ValueError: an unknown mode, or points that do not match the model's keypoints.
    """
    import keras

    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    images = np.asarray(images, np.float32)
    truth = np.asarray(points_rc, float)
    if truth.shape[1] != model.output_shape[-1]:
        raise ValueError(f"the points have {truth.shape[1]} keypoints but the model predicts {model.output_shape[-1]}")
    rng = np.random.default_rng(cfg.seed)
    targets = heatmap_targets(truth, images.shape[1], cfg.sigma_px)
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=keras.losses.BinaryCrossentropy())
    history = []
    for epoch in range(cfg.epochs):
        order = rng.permutation(len(images))
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            x, t = images[idx], truth[idx]
            hints = (_revise_hints(model, x, t, cfg, rng) if cfg.mode == "revise"
                     else _prompt_hints(x, t, cfg, rng))
            losses.append(float(model.train_on_batch(np.concatenate([x, hints], axis=-1), targets[idx])))
        history.append(float(np.mean(losses)))
        if on_epoch:
            on_epoch(epoch + 1, history[-1])
    return history
