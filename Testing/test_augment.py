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


# ---------------------------------------------------------------- how batches draw on the sources
def test_source_shares_follow_the_chosen_power_of_each_source_s_slice_count():
    from ivdseg.nn.augment import source_shares

    sources = ["spider"] * 400 + ["lumbar"] * 100 + ["vesal"] * 4
    assert source_shares(sources, "slices") == pytest.approx({"spider": 400 / 504, "lumbar": 100 / 504,
                                                              "vesal": 4 / 504})
    assert source_shares(sources, "sqrt") == pytest.approx({"spider": 20 / 32, "lumbar": 10 / 32, "vesal": 2 / 32})
    assert source_shares(sources, "equal") == pytest.approx({"spider": 1 / 3, "lumbar": 1 / 3, "vesal": 1 / 3})


def _drawn_share_of_the_small_source(mix, draws=1600):
    """Share of slices of the small source (label value 1, 10 of 100 slices) among ``draws`` training slices."""
    from ivdseg.nn.augment import make_dataset

    labels = np.zeros((100, 16, 16), np.uint8)
    labels[:10] = 1  # the small source's slices are all class 1, the large one's all background
    images = np.zeros((100, 16, 16), np.float32)
    data = make_dataset(images, labels, 2, batch_size=draws, augment=False, repeat=True, mix=mix)
    _, y = next(iter(data))
    return float(np.asarray(y)[:, 0, 0, 1].mean())


def test_a_mix_draws_each_source_with_its_share_and_without_it_every_slice_alike():
    groups = np.array(["small"] * 10 + ["large"] * 90)
    assert _drawn_share_of_the_small_source(None) == pytest.approx(0.1, abs=0.03)
    assert _drawn_share_of_the_small_source((groups, {"small": 0.5, "large": 0.5})) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="a share for every group"):
        _drawn_share_of_the_small_source((groups, {"small": 1.0}))
