"""tf.data input pipeline with augmentation suited to sagittal spine MRI.

Geometry: small rotation, isotropic and anisotropic scale, shift (never a flip: a flipped sagittal
slice puts the spine in front of the abdomen, which no scan shows). Intensity: gamma, contrast,
brightness, blur and noise, because MRI intensities differ from scanner to scanner. The "scanner" preset adds
what differs most between hospitals: a smooth multiplicative bias field (coil sensitivity) and a lower in-plane
resolution (a coarser acquisition matrix, area down-sampling then bilinear up-sampling, by a factor drawn per axis).
Every random draw is a stateless function of (seed, element index), so a run is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 12.0
    scale: tuple = (0.8, 1.25)
    aspect: tuple = (0.85, 1.18)
    shift_fraction: float = 0.08
    gamma: tuple = (0.6, 1.6)
    contrast: tuple = (0.75, 1.3)
    brightness: float = 0.1
    blur_probability: float = 0.2
    noise_std: tuple = (0.0, 0.04)
    bias_field: float = 0.0  # largest coefficient of the log bias field (a quadratic over the slice); 0: none
    downsample_probability: float = 0.0
    downsample: tuple = (1.0, 1.0)  # factor range of the in-plane resolution loss, per axis


PRESETS = {
    "standard": AugmentConfig(),
    "scanner": AugmentConfig(gamma=(0.5, 2.0), contrast=(0.7, 1.4), blur_probability=0.3, noise_std=(0.0, 0.06),
                             bias_field=0.35, downsample_probability=0.35, downsample=(1.3, 2.5)),
}


# How training batches draw on the sources of a dataset: the power of each source's slice count that its share
# follows. "slices": every slice alike (a source's share is its share of the slices); "sqrt": a small source drawn
# more often than its size says, a large one still the most; "equal": every source alike.
SOURCE_SAMPLING = {"slices": 1.0, "sqrt": 0.5, "equal": 0.0}


def source_shares(sources, sampling: str = "slices") -> dict[str, float]:
    """{source: share of the training slices drawn from it} under ``sampling`` (:data:`SOURCE_SAMPLING`), for the
    sources of the slices ``sources`` (N,); shares sum to 1."""
    names, counts = np.unique(np.asarray(sources, str), return_counts=True)
    weights = counts.astype(np.float64) ** SOURCE_SAMPLING[sampling]
    return {str(name): float(w) for name, w in zip(names, weights / weights.sum())}


def _affine_matrix(tf, seed, size, cfg: AugmentConfig):
    """Projective-transform vector mapping output to input pixel coordinates (rotation, scale, shift)."""
    u = tf.random.stateless_uniform([6], seed=seed)
    angle = (u[0] * 2 - 1) * cfg.rotation_deg * math.pi / 180
    log_s = math.log(cfg.scale[0]) + u[1] * (math.log(cfg.scale[1]) - math.log(cfg.scale[0]))
    log_a = math.log(cfg.aspect[0]) + u[2] * (math.log(cfg.aspect[1]) - math.log(cfg.aspect[0]))
    sx = tf.exp(log_s + log_a / 2)
    sy = tf.exp(log_s - log_a / 2)
    tx = (u[3] * 2 - 1) * cfg.shift_fraction * size
    ty = (u[4] * 2 - 1) * cfg.shift_fraction * size
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    # input = A^-1 (output - c) + c - shift, with A = rotation * diag(sx, sy)
    a0, a1 = cos / sx, sin / sx
    b0, b1 = -sin / sy, cos / sy
    a2 = c - a0 * c - a1 * c - tx
    b2 = c - b0 * c - b1 * c - ty
    return tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0])


def _warp(tf, image, transform, interpolation):
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
        interpolation=interpolation, fill_mode="CONSTANT", fill_value=0.0,
    )[0]


def augment_pair(image, label, seed, cfg: AugmentConfig = AugmentConfig()):
    """Augments one normalised slice and its label map.

    Args:
        image: (S, S, K) float32 in [0, 1] (K = 1, or a slice and its neighbours: warped alike).
        label: (S, S) uint8 class values or class bits (nearest-neighbour warping keeps either).
        seed: int64 tensor of shape (2,) for the stateless draws.

    Returns:
        (image (S, S, K) float32 in [0, 1], label (S, S) uint8).
    """
    import tensorflow as tf

    size = image.shape[0]
    s = tf.random.experimental.stateless_split(seed, 4)
    transform = _affine_matrix(tf, s[0], size, cfg)
    image = _warp(tf, image, transform, "BILINEAR")
    label = tf.cast(_warp(tf, tf.cast(label[..., None], tf.float32), transform, "NEAREST")[..., 0], tf.uint8)

    u = tf.random.stateless_uniform([6], seed=s[1])
    gamma = tf.exp(math.log(cfg.gamma[0]) + u[0] * (math.log(cfg.gamma[1]) - math.log(cfg.gamma[0])))
    image = tf.pow(tf.clip_by_value(image, 0.0, 1.0), gamma)
    contrast = cfg.contrast[0] + u[1] * (cfg.contrast[1] - cfg.contrast[0])
    mean = tf.reduce_mean(image)
    image = (image - mean) * contrast + mean + (u[2] * 2 - 1) * cfg.brightness
    blurred = tf.nn.avg_pool2d(image[None], 3, 1, "SAME")[0]
    image = tf.where(u[3] < cfg.blur_probability, blurred, image)
    if cfg.bias_field > 0:
        image = image * _bias_field(tf, s[3], size, cfg.bias_field)
    if cfg.downsample_probability > 0:
        image = _lower_resolution(tf, image, tf.random.experimental.stateless_split(s[3], 2)[1], size, cfg)
    noise_std = cfg.noise_std[0] + u[4] * (cfg.noise_std[1] - cfg.noise_std[0])
    image = image + noise_std * tf.random.stateless_normal(tf.shape(image), seed=s[2])
    return tf.clip_by_value(image, 0.0, 1.0), label


def _bias_field(tf, seed, size, strength):
    """(S, S, 1) smooth multiplicative field exp(quadratic in x, y), its coefficients uniform in +-strength."""
    c = (tf.random.stateless_uniform([5], seed=seed) * 2 - 1) * strength
    axis = tf.linspace(-1.0, 1.0, size)
    y, x = tf.meshgrid(axis, axis, indexing="ij")
    log_field = c[0] * x + c[1] * y + c[2] * x * x + c[3] * y * y + c[4] * x * y
    return tf.exp(log_field)[..., None]


def _lower_resolution(tf, image, seed, size, cfg):
    """With probability ``cfg.downsample_probability``, the slice as a coarser matrix would have acquired it."""
    u = tf.random.stateless_uniform([3], seed=seed)
    low, high = cfg.downsample
    rows = tf.cast(tf.round(size / (low + u[0] * (high - low))), tf.int32)
    cols = tf.cast(tf.round(size / (low + u[1] * (high - low))), tf.int32)
    coarse = tf.image.resize(tf.image.resize(image, tf.stack([rows, cols]), method="area"), [size, size],
                             method="bilinear")
    return tf.where(u[2] < cfg.downsample_probability, coarse, image)


def make_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int,
                 augment=True, shuffle=True, seed=0, repeat=False, cfg: AugmentConfig = AugmentConfig(),
                 available: np.ndarray | None = None, overlapping=False, mix: tuple | None = None):
    """Builds the training or validation ``tf.data.Dataset``.

    Args:
        images: (N, S, S) float32, already normalised to [0, 1], or (N, S, S, K) with K channels (a slice and its
            neighbours, ``--context-slices``), augmented alike.
        labels: (N, S, S) uint8: class values, or with ``overlapping`` one bit per class (:mod:`ivdseg.data.labels`).
        num_classes: classes including background (one-hot depth).
        batch_size: batch size.
        augment, shuffle: on for training, off for validation.
        seed: seed of shuffle and augmentation.
        repeat: repeat forever (then pass steps_per_epoch to fit).
        available: (N, C) bool, the classes each slice's source labels (:meth:`DatasetInfo.availability`);
            the channels of the others become -1, which the losses of :mod:`ivdseg.nn.losses` leave out.
            None: every class is labelled everywhere.
        overlapping: labels hold class bits; the target is multi-hot (channel 0: no class) instead of one-hot.
        mix: (groups (N,), {group: share}): with ``repeat`` and ``shuffle``, each slice is drawn from its group
            (e.g. its source) with that group's share, each group shuffled and repeated on its own
            (:func:`source_shares`); None: every slice alike.

    Returns:
        Dataset of (image (B, S, S, K) float32, one-hot or multi-hot (B, S, S, num_classes) float32).
    """
    import tensorflow as tf

    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[:3] != labels.shape:
        raise ValueError(f"images {images.shape} and labels {labels.shape} must be matching (N, S, S[, K]) stacks")
    n = len(images)
    if available is None:
        available = np.ones((n, num_classes), bool)
    if available.shape != (n, num_classes):
        raise ValueError(f"available {available.shape} must be (N, C) = {(n, num_classes)}")
    arrays = (images.astype(np.float32), labels.astype(np.uint8), available.astype(bool))
    if mix is not None and repeat and shuffle:
        groups, shares = np.asarray(mix[0]), mix[1]
        if groups.shape != (n,) or set(groups.tolist()) != set(shares):
            raise ValueError("mix must give a group for every slice and a share for every group")
        parts = []
        for k, name in enumerate(shares):
            rows = np.flatnonzero(groups == name)
            parts.append(tf.data.Dataset.from_tensor_slices(tuple(a[rows] for a in arrays)).repeat()
                         .shuffle(min(len(rows), 2048), seed=seed + k, reshuffle_each_iteration=True))
        data = tf.data.Dataset.sample_from_datasets(parts, weights=list(shares.values()), seed=seed)
    else:
        data = tf.data.Dataset.from_tensor_slices(arrays)
        if repeat:
            data = data.repeat()
        if shuffle:
            data = data.shuffle(min(n, 2048), seed=seed, reshuffle_each_iteration=True)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        data = tf.data.Dataset.zip((data, seeds)).map(
            lambda item, sd: (*augment_pair(item[0], item[1], sd, cfg), item[2]),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True,
        )

    def to_onehot(image, label, known):
        if overlapping:  # bit c - 1 of the label is class c; channel 0 is "no class"
            bits = tf.bitwise.right_shift(tf.cast(label, tf.int32)[..., None], tf.range(num_classes - 1))
            onehot = tf.concat([tf.cast(label == 0, tf.float32)[..., None],
                                tf.cast(tf.bitwise.bitwise_and(bits, 1), tf.float32)], axis=-1)
        else:
            onehot = tf.one_hot(tf.cast(label, tf.int32), num_classes, dtype=tf.float32)
        return image, tf.where(known[None, None, :], onehot, -tf.ones_like(onehot))

    data = data.map(to_onehot, num_parallel_calls=tf.data.AUTOTUNE)
    return data.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
