"""Training a hint-conditioned keypoint network by simulating the user who corrects it.

Two ways, both from the seed design, selectable and comparable:

* ``"revise"``: predict, find the worst point of each sample (or one of its few worst, at random), give its true
  position as a hint, predict again, and learn on the last pass: the network learns what a correction means for the
  points it did not get. Each batch makes a random number of such rounds (0 to ``max_rounds``), so the network also
  keeps learning the first, unhinted prediction.
* ``"prompt"``: give hints before the only prediction, to a share of the samples, each hinted sample getting a random
  number of true points (1 to ``max_hints``): the network learns what a hint means from the start. A user corrects one
  to three points; with many hints the task is copying them, so a small ``max_hints`` trains what a user will ask.

Heatmap loss: binary cross-entropy (what the seed settled on), averaged over pixels and keypoints, or its focal
variant for soft targets (``"focal"``): each pixel's cross-entropy weighted by ``|target - prediction| ** 2``, so the
many background pixels a heatmap already gets right stop outweighing the few near its peak (the quality focal loss of
Li et al., NeurIPS 2020, which suits Gaussian targets better than a focal loss for 0/1 targets). Optionally a
morphology term (``morphology_weight`` > 0) is added: the vector from each keypoint to the next in the package's order
(the next disc; the next corner of a vertebra, or the first of the vertebra below), taken from soft-argmax positions of
the predicted and the target heatmaps, must match, so the network is taught the shape of the chain, not only each
point; a shifted whole costs nothing (Kim et al., MICCAI 2022, train their interactive network with such a
morphology-aware loss for the same reason). The loop runs
batch by batch in Python (a prediction is needed before each revised step); it is meant for the small keypoint
sets of this project, not for throughput. With validation data, the weights of the epoch with the lowest validation
error (the mean radial error before and after one simulated correction, averaged) are kept. After every epoch the
whole state (weights, the optimizer's moments, the best weights so far, the random generator, the history) can be
written to one file, from which a killed run continues as if it had not stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ivdseg.inference.keypoints import gaussian, hint_channels, predict_points

MODES = ("revise", "prompt")
LOSSES = ("bce", "focal")


@dataclass
class KeypointTrainConfig:
    mode: str = "revise"
    loss: str = "bce"  # one of LOSSES
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 1e-3
    sigma_px: float = 3.0
    worst_of: int = 1  # "revise": the hint goes to one of the worst ``worst_of`` points, at random
    max_rounds: int = 2  # "revise": correction rounds per batch, 0..max_rounds
    prompt_share: float = 0.5  # "prompt": the share of samples that get hints
    max_hints: int = 0  # "prompt": a hinted sample gets 1..max_hints true points (0: up to every keypoint)
    morphology_weight: float = 0.0  # weight of the neighbour-vector term added to the heatmap loss (0: none)
    augment: bool = False  # random scale, rotation, shift and gamma of each training sample
    patience: int = 0  # with validation data: stop after this many epochs without a better one (0: never)
    seed: int = 0


def heatmap_targets(points_rc, shape_hw, sigma_px: float) -> np.ndarray:
    """(N, H, W, K) Gaussians at the true points (N, K, 2); ``shape_hw`` is H = W or (H, W)."""
    points = np.asarray(points_rc, float)
    h, w = (shape_hw, shape_hw) if np.isscalar(shape_hw) else shape_hw
    out = np.zeros((len(points), h, w, points.shape[1]), np.float32)
    for n, sample in enumerate(points):
        for k, p in enumerate(sample):
            out[n, ..., k] = gaussian((h, w), p, sigma_px)
    return out


def focal_heatmap_loss(gamma: float = 2.0):
    """Binary cross-entropy of each pixel weighted by ``|target - prediction| ** gamma``, summed over the pixels of
    each heatmap (a per-pixel mean would make the loss vanish as the background is learnt), then averaged over
    heatmaps and samples by Keras."""
    from keras import ops

    def focal(y_true, y_pred):
        p = ops.clip(y_pred, 1e-6, 1.0 - 1e-6)
        bce = -(y_true * ops.log(p) + (1.0 - y_true) * ops.log(1.0 - p))
        return ops.sum(ops.power(ops.abs(y_true - p), gamma) * bce, axis=(1, 2))

    return focal


def expected_positions(heatmaps, sharpness: float = 1.0):
    """(N, K, 2) soft-argmax (row, column) of (N, H, W, K) heatmaps in [0, 1], differentiable: the mean pixel position
    weighted by ``heatmap ** sharpness`` (1 for Gaussian targets, which it returns exactly when they lie inside the
    grid; a larger power for predictions, so that the faint background of a sigmoid heatmap does not pull the
    position towards the centre)."""
    from keras import ops

    h, w, k = heatmaps.shape[1], heatmaps.shape[2], heatmaps.shape[3]
    logw = sharpness * ops.log(ops.clip(ops.cast(heatmaps, "float32"), 1e-6, 1.0))
    weights = ops.softmax(ops.reshape(ops.transpose(logw, (0, 3, 1, 2)), (-1, k, h * w)), axis=-1)
    rows = ops.reshape(ops.repeat(ops.arange(h, dtype="float32"), w), (1, 1, h * w))
    cols = ops.reshape(ops.tile(ops.arange(w, dtype="float32"), h), (1, 1, h * w))
    return ops.stack([ops.sum(weights * rows, axis=-1), ops.sum(weights * cols, axis=-1)], axis=-1)


def morphology_term(y_true, y_pred, sharpness: float = 4.0):
    """(N, 1): the mean absolute difference between the predicted and the true vectors from each keypoint to the next
    (rows and columns), as a share of the longer image side. Invariant to shifting every point alike."""
    from keras import ops

    y_true = ops.reshape(y_true, (-1, *y_pred.shape[1:]))  # the network's static shape, whatever Keras traced
    truth, pred = expected_positions(y_true), expected_positions(y_pred, sharpness)
    d_true, d_pred = truth[:, 1:] - truth[:, :-1], pred[:, 1:] - pred[:, :-1]
    size = float(max(y_pred.shape[1], y_pred.shape[2]))
    return ops.mean(ops.abs(d_pred - d_true), axis=(1, 2))[:, None] / size


def heatmap_loss(name: str, morphology_weight: float = 0.0):
    """The training loss: the heatmap loss ``name`` (one of LOSSES), plus ``morphology_weight`` times
    ``morphology_term`` when it is above 0."""
    import keras

    base = keras.losses.BinaryCrossentropy() if name == "bce" else focal_heatmap_loss()
    if morphology_weight <= 0:
        return base

    def with_morphology(y_true, y_pred):
        return base(y_true, y_pred) + morphology_weight * morphology_term(y_true, y_pred)

    return with_morphology


def _revise_hints(model, images, truth, cfg, rng, rounds=None):
    """Hints of the "revise" mode: round after round, each sample's worst point of the current prediction (one of
    the ``worst_of`` worst among those not fixed yet) is fixed; the hints of the last round are returned."""
    shape, k = images.shape[1:3], truth.shape[1]
    fixed = np.full(truth.shape, np.nan)
    hints = np.zeros((len(images), *shape, k), np.float32)
    for _ in range(int(rng.integers(0, cfg.max_rounds + 1)) if rounds is None else rounds):
        errors = np.linalg.norm(predict_points(model, images, hints) - truth, axis=-1)  # (N, K)
        for n, e in enumerate(errors):
            e = np.where(np.isnan(fixed[n, :, 0]), e, -np.inf)  # a fixed point stays fixed
            worst = np.argsort(-e)[:max(1, min(cfg.worst_of, int(np.isfinite(e).sum())))]
            pick = int(rng.choice(worst))
            fixed[n, pick] = truth[n, pick]
        hints = np.stack([hint_channels(h, shape, cfg.sigma_px) for h in fixed])
    return hints


def _prompt_hints(images, truth, cfg, rng):
    """Hints of the "prompt" mode: 1..``max_hints`` true points, chosen at random, for a share of the samples, none
    for the rest."""
    shape, k = images.shape[1:3], truth.shape[1]
    most = min(cfg.max_hints, k) if cfg.max_hints > 0 else k
    hints = np.full(truth.shape, np.nan)
    for n in range(len(images)):
        if rng.random() < cfg.prompt_share:
            chosen = rng.choice(k, size=int(rng.integers(1, most + 1)), replace=False)
            hints[n, chosen] = truth[n, chosen]
    return np.stack([hint_channels(h, shape, cfg.sigma_px) for h in hints])


def augment(images, points, rng):
    """Random similarity transform (scale 0.9-1.1, rotation +-8 degrees, shift +-5 %) and gamma (0.7-1.4) of each
    sample; the points move with the image. Images (N, H, W, C) in [0, 1], points (N, K, 2) (row, column)."""
    import cv2

    out_i, out_p = np.empty_like(images), np.empty_like(points)
    n, h, w = images.shape[:3]
    for i in range(n):
        scale, angle = rng.uniform(0.9, 1.1), rng.uniform(-8.0, 8.0)
        shift = rng.uniform(-0.05, 0.05, 2) * (h, w)
        m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle, scale)
        m[:, 2] += shift[::-1]
        warped = cv2.warpAffine(images[i], m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        out_i[i] = warped.reshape(images[i].shape) ** rng.uniform(0.7, 1.4)
        xy = points[i][:, ::-1]  # (column, row) = (x, y) for OpenCV
        out_p[i] = (xy @ m[:, :2].T + m[:, 2])[:, ::-1]
    return np.clip(out_i, 0.0, 1.0), out_p


def validation_errors(model, images, truth, sigma_px: float, rounds: int = 1) -> list[float]:
    """Mean radial error (pixels of the input grid) after 0..``rounds`` simulated corrections of the worst point,
    measured as ``evaluate-keypoints`` measures it."""
    from ivdseg.eval.keypoints_eval import correction_curves

    n = len(images)
    curves = correction_curves(model, images, truth, np.ones((n, 2)), np.full((n, 2), np.nan), sigma_px, rounds)
    return [float(v) for v in curves["model"].mean(axis=1)]


# KeypointTrainConfig fields a resumed run may change: how long it goes on, not what it learns.
EXTENDABLE = ("epochs", "patience")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed: missing, unreadable, or from another training."""


def _variables(model):
    """The optimizer's variables (its step count and Adam's moments), built if the model has not trained yet."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    return optimizer.variables


def save_checkpoint(path, model, state: dict, best_weights) -> None:
    """Writes the training state to ``path`` (.npz, read with ``allow_pickle=False``), atomically.

    Args:
        path: the checkpoint file; replaced whole, so a kill leaves the previous epoch's state.
        model: a compiled model: its weights (``w0``...) and its optimizer's variables (``o0``...) are stored.
        state: JSON values (history, best score, epochs without gain, the random generator's state, settings).
        best_weights: the weights of the best epoch so far (``b0``...), or None.

    Raises:
        IvdsegError: the file could not be written (full disk, permissions); the previous one is left as it was.
    """
    from keras import ops

    from ivdseg.io.atomic import atomic_write

    arrays = {f"w{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"o{i}": ops.convert_to_numpy(v) for i, v in enumerate(_variables(model))})
    arrays.update({f"b{i}": w for i, w in enumerate(best_weights or [])})
    arrays["state"] = np.array(json.dumps(state))

    def write(temp):
        with open(temp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(Path(path), write, overwrite=True)


def load_checkpoint(path, model, cfg: KeypointTrainConfig, settings: dict | None = None):
    """Restores a compiled ``model`` (weights and optimizer) from ``path``.

    Args:
        path: a file written by :func:`save_checkpoint`.
        model: the compiled network to restore into (built with the run's shape).
        cfg: the requested configuration; only :data:`EXTENDABLE` fields may differ from the saved one.
        settings: further JSON values that must equal the saved ones (the network's shape, the keypoints).

    Returns:
        (state, best weights or None): the saved JSON state and the best epoch's weights.

    Raises:
        CheckpointError: no such file, an unreadable one, or one saved with other settings (anything but
            :data:`EXTENDABLE`) or for another network.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        state = json.loads(str(arrays.pop("state")))
    except FileNotFoundError:
        raise CheckpointError(f"there is nothing to resume: {path} is missing") from None
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise CheckpointError(f"{path} is not readable ({exc})") from None
    requested = {**_resumable(cfg), **(settings or {})}
    saved = {**state.get("config", {}), **state.get("settings", {})}
    differ = sorted(k for k in requested if k in saved and saved[k] != requested[k])
    if differ:
        raise CheckpointError("it was trained with " + ", ".join(f"{k} {saved[k]}" for k in differ)
                              + " but this run asks for " + ", ".join(f"{k} {requested[k]}" for k in differ))
    own, variables = model.get_weights(), _variables(model)

    def group(prefix):
        return [arrays[f"{prefix}{i}"] for i in range(sum(k.startswith(prefix) and k[1:].isdigit() for k in arrays))]

    weights, opt, best = group("w"), group("o"), group("b")
    shapes = [w.shape for w in own]
    if ([w.shape for w in weights] != shapes or [w.shape for w in best or weights] != shapes
            or [o.shape for o in opt] != [tuple(v.shape) for v in variables]):
        raise CheckpointError("its weights belong to another network")
    model.set_weights(weights)
    for variable, value in zip(variables, opt):
        variable.assign(value)
    return state, best or None


def _resumable(cfg: KeypointTrainConfig) -> dict:
    return {k: v for k, v in asdict(cfg).items() if k not in EXTENDABLE}


def fit(model, images: np.ndarray, points_rc: np.ndarray, cfg: KeypointTrainConfig, on_epoch=None,
        validation=None, should_stop=None, checkpoint=None, resume=False, settings=None) -> list[dict]:
    """Trains ``model`` (a ``keypoint_unet`` with hints) on images (N, H, W, C) and true points (N, K, 2).

    Args:
        validation: optional (images, points) scored after each epoch; the best epoch's weights are kept.
        on_epoch: called as ``on_epoch(record)`` after each epoch.
        should_stop: called between batches; True leaves the loop (the best weights so far are kept).
        checkpoint: a file (.npz) rewritten after every whole epoch with the training state.
        resume: continue from ``checkpoint`` (epochs and patience may differ; nothing else may).
        settings: JSON values the checkpoint records and a resumed run must repeat (the network's shape, the
            dataset's keypoints).

    Returns:
        one record per epoch (those before a resume included): {"epoch", "loss", "seconds"} (training time so far)
        and, with validation, {"val_mre0", "val_mre1", "best"}.

    Raises:
        ValueError: an unknown mode, or points that do not match the model's keypoints.
        CheckpointError: ``resume`` and a checkpoint that is missing, unreadable or from other settings.
    """
    import keras

    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {cfg.loss!r}")
    images = np.asarray(images, np.float32)
    truth = np.asarray(points_rc, float)
    if truth.shape[1] != model.output_shape[-1]:
        raise ValueError(f"the points have {truth.shape[1]} keypoints but the model predicts {model.output_shape[-1]}")
    if not np.isfinite(truth).all():
        raise ValueError("every training sample needs all its keypoints (found a missing one)")
    rng = np.random.default_rng(cfg.seed)
    shape = images.shape[1:3]
    if not cfg.morphology_weight >= 0:  # also refuses nan
        raise ValueError(f"the morphology weight must be 0 or more, got {cfg.morphology_weight}")
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss=heatmap_loss(cfg.loss, cfg.morphology_weight))
    history, best, best_weights, since, seconds = [], np.inf, None, 0, 0.0
    if resume:
        state, best_weights = load_checkpoint(checkpoint, model, cfg, settings)
        history, since, seconds = state["history"], state["since"], state["seconds"]
        best = np.inf if state["best"] is None else state["best"]
        rng.bit_generator.state = state["rng"]
    for epoch in range(len(history), cfg.epochs):
        if cfg.patience and since >= cfg.patience:  # early stopping (also a resumed run that had stopped)
            break
        started = time.perf_counter()
        order = rng.permutation(len(images))
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            if should_stop and should_stop():
                break
            idx = order[start:start + cfg.batch_size]
            x, t = images[idx], truth[idx]
            if cfg.augment:
                x, t = augment(x, t, rng)
            hints = (_revise_hints(model, x, t, cfg, rng) if cfg.mode == "revise"
                     else _prompt_hints(x, t, cfg, rng))
            target = heatmap_targets(t, shape, cfg.sigma_px)
            losses.append(float(model.train_on_batch(np.concatenate([x, hints], axis=-1), target)))
        if not losses:
            break
        whole = len(losses) == -(-len(images) // cfg.batch_size)
        seconds += time.perf_counter() - started
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": round(seconds, 1)}
        if validation is not None:
            mre = validation_errors(model, *validation, cfg.sigma_px)
            score = float(np.mean(mre))
            record.update(val_mre0=mre[0], val_mre1=mre[1], best=score < best)
            if score < best:
                best, best_weights, since = score, model.get_weights(), 0
            else:
                since += 1
        history.append(record)
        if checkpoint is not None and whole:  # a stop inside an epoch: a resumed run repeats that epoch
            save_checkpoint(checkpoint, model, {
                "history": history, "since": since, "seconds": seconds, "best": None if best == np.inf else best,
                "rng": rng.bit_generator.state, "config": _resumable(cfg), "settings": settings or {}}, best_weights)
        if on_epoch:
            on_epoch(record)
        if should_stop and should_stop():
            break
    if best_weights is not None:
        model.set_weights(best_weights)
    return history
