"""The training augmentation: labels stay labels, intensities stay in [0, 1], draws are reproducible, and the
"scanner" preset changes intensities only (bias field, coarser resolution), never the geometry."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ivdseg.nn.augment import PRESETS, AugmentConfig, _bias_field, _lower_resolution, augment_pair  # noqa: E402

SIZE = 64


def _pair():
    yy, xx = np.mgrid[:SIZE, :SIZE]
    image = (0.2 + 0.6 * ((yy // 8 + xx // 8) % 2)).astype(np.float32)[..., None]  # a checkerboard: sharp edges
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[20:30, 16:48] = 1
    label[36:44, 16:48] = 2
    return tf.constant(image), tf.constant(label)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_labels_stay_labels_and_images_stay_in_range(preset):
    image, label = _pair()
    for seed in range(5):
        out_image, out_label = augment_pair(image, label, tf.constant([seed, 1], tf.int64), PRESETS[preset])
        assert set(np.unique(out_label.numpy())) <= {0, 1, 2}
        values = out_image.numpy()
        assert values.min() >= 0.0 and values.max() <= 1.0 and values.shape == (SIZE, SIZE, 1)


def test_the_same_seed_gives_the_same_pair_and_another_seed_another():
    image, label = _pair()
    a = augment_pair(image, label, tf.constant([3, 4], tf.int64), PRESETS["scanner"])
    b = augment_pair(image, label, tf.constant([3, 4], tf.int64), PRESETS["scanner"])
    c = augment_pair(image, label, tf.constant([5, 4], tf.int64), PRESETS["scanner"])
    np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    assert not np.array_equal(a[0].numpy(), c[0].numpy())


def test_the_scanner_preset_changes_intensities_only():
    image, label = _pair()
    for seed in range(5):
        seed_tensor = tf.constant([seed, 9], tf.int64)
        _, standard = augment_pair(image, label, seed_tensor, PRESETS["standard"])
        _, scanner = augment_pair(image, label, seed_tensor, PRESETS["scanner"])
        np.testing.assert_array_equal(standard.numpy(), scanner.numpy())


def test_the_bias_field_is_smooth_positive_and_one_without_strength():
    field = _bias_field(tf, tf.constant([1, 2], tf.int64), SIZE, 0.35).numpy()[..., 0]
    assert field.min() > np.exp(-5 * 0.35) and field.max() < np.exp(5 * 0.35)
    assert np.abs(np.diff(field, axis=0)).max() < 0.1 and np.abs(np.diff(field, axis=1)).max() < 0.1
    assert field.std() > 0.01
    np.testing.assert_allclose(_bias_field(tf, tf.constant([1, 2], tf.int64), SIZE, 0.0).numpy(), 1.0)


def test_a_coarser_matrix_loses_the_fine_detail():
    image, _ = _pair()
    always = AugmentConfig(downsample_probability=1.0, downsample=(2.0, 2.0))
    coarse = _lower_resolution(tf, image, tf.constant([0, 1], tf.int64), SIZE, always).numpy()[..., 0]
    sharp = image.numpy()[..., 0]
    edges = lambda a: np.abs(np.diff(a, axis=1)).max()  # noqa: E731
    assert edges(coarse) < 0.8 * edges(sharp)
    assert abs(coarse.mean() - sharp.mean()) < 0.02  # the area down-sampling keeps the mean
    never = AugmentConfig(downsample_probability=0.0, downsample=(2.0, 2.0))
    np.testing.assert_array_equal(_lower_resolution(tf, image, tf.constant([0, 1], tf.int64), SIZE, never).numpy(),
                                  image.numpy())
