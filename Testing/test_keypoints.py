"""Keypoint heatmaps: hint encoding lands where asked (pixels and mm), decoding finds known sub-pixel peaks, and the
hint-conditioned network has the inputs and outputs its users rely on."""

from __future__ import annotations

import numpy as np
import pytest

from ivdseg.inference.keypoints import (decode_heatmaps, gaussian, hint_channels, mm_to_pixels, pixels_to_mm,
                                        radial_errors)


def test_a_hint_lands_where_asked_and_an_unfixed_keypoint_gets_none():
    hints = hint_channels([[10.0, 20.0], [np.nan, np.nan], [40.25, 7.75]], size=64, sigma_px=2.0)
    assert hints.shape == (64, 64, 3) and hints.dtype == np.float32
    assert np.unravel_index(np.argmax(hints[..., 0]), (64, 64)) == (10, 20) and hints[10, 20, 0] == pytest.approx(1.0)
    assert not hints[..., 1].any()
    points, _ = decode_heatmaps(hints[..., [0, 2]])
    np.testing.assert_allclose(points, [[10.0, 20.0], [40.25, 7.75]], atol=0.02)


def test_a_hint_given_in_mm_lands_on_its_pixel_for_anisotropic_spacing():
    spacing = (0.5, 0.8)  # mm between rows, between columns
    point_mm = np.array([[12.0, 16.0]])
    px = mm_to_pixels(point_mm, spacing)
    np.testing.assert_allclose(px, [[24.0, 20.0]])
    decoded, _ = decode_heatmaps(hint_channels(px, 48))
    np.testing.assert_allclose(pixels_to_mm(decoded, spacing), point_mm, atol=0.02)


@pytest.mark.parametrize("centre", [(31.3, 12.8), (5.5, 50.49), (20.0, 20.0), (0.0, 63.0)])
def test_decoding_finds_known_sub_pixel_peaks(centre):
    heatmap = gaussian(64, centre, sigma_px=3.0)[..., None] * 0.8
    points, peaks = decode_heatmaps(heatmap)
    np.testing.assert_allclose(points[0], centre, atol=0.02)
    assert peaks[0] == pytest.approx(0.8, abs=0.05)


def test_radial_errors():
    assert radial_errors([[0, 0], [3, 4]], [[0, 0], [0, 0]]).tolist() == [0.0, 5.0]


def test_the_keypoint_network_takes_the_image_and_one_hint_per_keypoint():
    pytest.importorskip("keras")
    from ivdseg.nn.networks import KEYPOINT_NETWORKS

    model = KEYPOINT_NETWORKS["keypoint_unet"](input_size=32, num_keypoints=5, depth=2, base_filters=4)
    assert model.input_shape == (None, 32, 32, 6) and model.output_shape == (None, 32, 32, 5)
    out = np.asarray(model(np.zeros((2, 32, 32, 6), np.float32)))
    assert ((out > 0) & (out < 1)).all()  # sigmoid heatmaps
    plain = KEYPOINT_NETWORKS["keypoint_unet"](input_size=32, num_keypoints=5, depth=2, base_filters=4, hints=False)
    assert plain.input_shape == (None, 32, 32, 1)
    with pytest.raises(ValueError, match="num_keypoints"):
        KEYPOINT_NETWORKS["keypoint_unet"](input_size=32, num_keypoints=0)


def test_hints_at_every_scale_reach_each_deeper_stage_pooled_to_its_resolution():
    pytest.importorskip("keras")
    from ivdseg.nn.networks import KEYPOINT_NETWORKS

    build = KEYPOINT_NETWORKS["keypoint_unet"]
    model = build(input_size=(64, 32), num_keypoints=5, depth=3, base_filters=4, hints_every_scale=True)
    assert model.input_shape == (None, 64, 32, 6) and model.output_shape == (None, 64, 32, 5)
    for stage in (1, 2, 3):  # the pooled image + 5 hints join the stage's own features
        concat = model.get_layer(f"side_stage{stage}_concat")
        assert concat.output.shape[1:3] == (64 // 2**stage, 32 // 2**stage)
        assert concat.output.shape[-1] == 4 * 2 ** (stage - 1) + 6
    assert model.count_params() > build(input_size=(64, 32), num_keypoints=5, depth=3, base_filters=4).count_params()
    x = np.zeros((1, 64, 32, 6), np.float32)
    hinted = x.copy()
    hinted[0, 60, 2, 1] = 1.0  # one hint pixel in a corner
    side = keras_submodel(model, "side_stage3_concat")
    assert not np.allclose(side(hinted)[..., -5:], side(x)[..., -5:])  # the bottleneck sees the hint itself
    plain = build(input_size=32, num_keypoints=5, depth=2, base_filters=4, hints=False, hints_every_scale=True)
    assert not [layer for layer in plain.layers if layer.name.startswith("side_")]  # no hints: nothing to feed


def keras_submodel(model, layer_name):
    import keras

    return keras.Model(model.input, model.get_layer(layer_name).output)


def _bar_task(n, seed, size=48, step=8):
    """Three points in a vertical line (rows r0, r0 + step, r0 + 2 step) on a vertical bar: the image gives the
    column, never the rows, so only a hint can tell where the line sits; a hint on one point fixes the others."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 1), np.float32)
    points = np.zeros((n, 3, 2))
    for i in range(n):
        r0, c0 = rng.uniform(4, size - 4 - 2 * step), rng.uniform(6, size - 6)
        images[i, :, int(round(c0)) - 1:int(round(c0)) + 2, 0] = 1.0
        points[i] = [[r0 + k * step, c0] for k in range(3)]
    return images, points


@pytest.mark.slow
@pytest.mark.parametrize("mode, loss", [("revise", "bce"), ("prompt", "bce"), ("prompt", "focal")])
def test_the_simulated_user_teaches_a_hint_to_move_the_other_points(mode, loss):
    """Once the top point is given, the rows of the two untouched points follow it (to under 2 px and under 0.3 of
    their unhinted error); without the mechanism a hint could not move them at all."""
    pytest.importorskip("keras")
    import keras

    from ivdseg.inference.keypoints import predict_points
    from ivdseg.nn.keypoint_train import KeypointTrainConfig, fit
    from ivdseg.nn.networks import KEYPOINT_NETWORKS

    keras.utils.set_random_seed(0)
    images, points = _bar_task(96, seed=1)
    model = KEYPOINT_NETWORKS["keypoint_unet"](input_size=48, num_keypoints=3, depth=3, base_filters=8)
    cfg = KeypointTrainConfig(mode=mode, loss=loss, epochs=30, batch_size=16, learning_rate=3e-3, max_rounds=1,
                              prompt_share=0.7, sigma_px=3.0)
    losses = [r["loss"] for r in fit(model, images, points, cfg)]
    assert losses[-1] < 0.6 * losses[0]  # (Gaussian targets: binary cross-entropy has a floor above 0)
    test_images, test_points = _bar_task(40, seed=2)
    none = np.zeros((40, 48, 48, 3), np.float32)
    hint_top = np.stack([hint_channels([p[0], [np.nan] * 2, [np.nan] * 2], 48, 3.0) for p in test_points])
    before = np.abs(predict_points(model, test_images, none) - test_points)[:, 1:, 0].mean()
    after = np.abs(predict_points(model, test_images, hint_top) - test_points)[:, 1:, 0].mean()
    # the rows of the two points the user did not touch follow the one they fixed
    assert after < 0.3 * before and after < 2.0, (before, after)


def test_bad_training_settings_are_refused():
    pytest.importorskip("keras")
    from ivdseg.nn.keypoint_train import KeypointTrainConfig, fit
    from ivdseg.nn.networks import KEYPOINT_NETWORKS

    model = KEYPOINT_NETWORKS["keypoint_unet"](input_size=16, num_keypoints=3, depth=1, base_filters=2)
    images, points = np.zeros((2, 16, 16, 1), np.float32), np.zeros((2, 3, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        fit(model, images, points, KeypointTrainConfig(mode="guess"))
    with pytest.raises(ValueError, match="loss must be one of"):
        fit(model, images, points, KeypointTrainConfig(loss="mse"))
    with pytest.raises(ValueError, match="morphology weight must be 0 or more"):
        fit(model, images, points, KeypointTrainConfig(morphology_weight=-1.0))
    with pytest.raises(ValueError, match="morphology weight must be 0 or more"):
        fit(model, images, points, KeypointTrainConfig(morphology_weight=float("nan")))
    with pytest.raises(ValueError, match="2 keypoints but the model predicts 3"):
        fit(model, images, points[:, :2], KeypointTrainConfig())


@pytest.mark.parametrize("max_hints, most", [(0, 6), (2, 2), (9, 6)])
def test_prompt_hints_give_each_hinted_sample_between_one_and_max_hints_true_points(max_hints, most):
    """The prompt mode's hints are Gaussians at true points; a hinted sample gets 1..max_hints of them (0 or more
    than the keypoints: up to all of them), a sample outside the prompt share none."""
    from ivdseg.nn.keypoint_train import KeypointTrainConfig, _prompt_hints

    rng = np.random.default_rng(0)
    truth = rng.uniform(4, 28, (400, 6, 2))
    cfg = KeypointTrainConfig(mode="prompt", prompt_share=0.5, max_hints=max_hints, sigma_px=1.5)
    hints = _prompt_hints(np.zeros((400, 32, 32, 1), np.float32), truth, cfg, rng)
    given = hints.max(axis=(1, 2)) > 0  # (N, K): an unfixed keypoint's channel is all zero
    counts = given.sum(axis=1)
    assert set(np.unique(counts)) == set(range(most + 1))
    assert 0.4 < (counts == 0).mean() < 0.6
    for n, k in zip(*np.nonzero(given)):  # each lands on its own keypoint's true position
        np.testing.assert_allclose(np.unravel_index(np.argmax(hints[n, ..., k]), (32, 32)), np.round(truth[n, k]),
                                   atol=1)


def test_the_focal_heatmap_loss_on_known_values():
    """Each pixel's cross-entropy weighted by |target - prediction| ** 2, summed over the pixels of a heatmap: a pixel
    predicted exactly costs nothing, whatever its target."""
    pytest.importorskip("keras")
    from ivdseg.nn.keypoint_train import focal_heatmap_loss

    y_true = np.array([0.0, 0.5, 1.0, 0.2], np.float32).reshape(1, 2, 2, 1)
    y_pred = np.array([0.1, 0.5, 0.8, 0.2], np.float32).reshape(1, 2, 2, 1)
    expected = 0.1 ** 2 * -np.log(0.9) + 0.2 ** 2 * -np.log(0.8)
    value = np.asarray(focal_heatmap_loss()(y_true, y_pred))
    assert value.shape == (1, 1) and value[0, 0] == pytest.approx(expected, rel=1e-4)
    assert float(np.asarray(focal_heatmap_loss()(y_true, y_true)).sum()) == pytest.approx(0.0, abs=1e-6)


def _gaussian_maps(points_rc, shape=(40, 48), sigma=2.0):
    from ivdseg.nn.keypoint_train import heatmap_targets

    return heatmap_targets(np.asarray(points_rc, float)[None], shape, sigma)


def test_expected_positions_find_the_peaks_of_gaussian_and_of_faint_sigmoid_heatmaps():
    """Soft-argmax returns a Gaussian target's centre, sub-pixel; on a prediction with a sigmoid's faint background
    (0.02 everywhere, as an untrained head starts), the power keeps the position on the peak, not the image centre."""
    pytest.importorskip("keras")
    from ivdseg.nn.keypoint_train import expected_positions

    points = [[6.3, 9.7], [20.0, 24.5], [31.6, 40.2]]
    maps = _gaussian_maps(points)
    np.testing.assert_allclose(np.asarray(expected_positions(maps)), [points], atol=5e-3)
    faint = np.maximum(maps, 0.02).astype(np.float32)
    np.testing.assert_allclose(np.asarray(expected_positions(faint, sharpness=4.0)), [points], atol=0.05)
    assert np.abs(np.asarray(expected_positions(faint))[0, 0] - points[0]).max() > 3  # plain weights drift


def test_the_morphology_term_on_known_values():
    """The vectors from each point to the next must match: a whole shifted costs nothing; one point moved 3 rows
    changes both vectors it belongs to by 3 rows: (3 + 3) / 4 (two vectors x rows and columns) / 48 (the long side)."""
    pytest.importorskip("keras")
    from ivdseg.nn.keypoint_train import heatmap_loss, morphology_term

    truth = [[8.0, 10.0], [20.0, 24.0], [30.0, 36.0]]
    y_true = _gaussian_maps(truth)
    shifted = _gaussian_maps([[r + 2.5, c - 1.5] for r, c in truth])
    moved = _gaussian_maps([truth[0], [23.0, 24.0], truth[2]])
    assert float(np.asarray(morphology_term(y_true, shifted))[0, 0]) == pytest.approx(0.0, abs=1e-4)
    assert float(np.asarray(morphology_term(y_true, moved))[0, 0]) == pytest.approx(6 / 4 / 48, rel=1e-3)
    with_term, plain = heatmap_loss("bce", 2.0), heatmap_loss("bce")
    added = float(np.mean(np.asarray(with_term(y_true, moved)))) - float(np.mean(np.asarray(plain(y_true, moved))))
    assert added == pytest.approx(2.0 * 6 / 4 / 48, rel=1e-3)


def _tiny_run(checkpoint=None, resume=False, epochs=3, stop_after=None, **changes):
    """A small prompt training on the bar task with validation; ``stop_after`` batches, a stop is requested."""
    import keras

    from ivdseg.nn.keypoint_train import KeypointTrainConfig, fit
    from ivdseg.nn.networks import KEYPOINT_NETWORKS

    keras.utils.set_random_seed(0)
    images, points = _bar_task(20, seed=1, size=32, step=6)
    model = KEYPOINT_NETWORKS["keypoint_unet"](input_size=32, num_keypoints=3, depth=2, base_filters=4)
    cfg = KeypointTrainConfig(**{"mode": "prompt", "epochs": epochs, "batch_size": 8, "learning_rate": 3e-3,
                                 "augment": True, **changes})
    calls = []
    stop = None if stop_after is None else (lambda: calls.append(1) or len(calls) > stop_after)
    history = fit(model, images[:16], points[:16], cfg, validation=(images[16:], points[16:]), should_stop=stop,
                  checkpoint=checkpoint, resume=resume, settings={"size": 32})
    return model, history


def test_a_stopped_keypoint_training_resumes_as_if_it_had_not_stopped(tmp_path):
    """Stopped inside its third epoch, the run keeps the state of the second in its checkpoint (weights, Adam's
    moments, the best weights, the random generator); resumed, it ends with the weights and the history of a run that
    never stopped. A checkpoint of other settings, or none, is refused."""
    pytest.importorskip("keras")
    from ivdseg.nn.keypoint_train import CheckpointError

    whole, whole_history = _tiny_run()
    state = tmp_path / "state.npz"
    # asked 3 times an epoch (before each of its 2 batches, then at its end): the 8th call stops inside epoch 3
    stopped, stopped_history = _tiny_run(state, stop_after=7)
    assert len(stopped_history) == 3  # the partial epoch is reported ...
    with np.load(state, allow_pickle=False) as data:  # ... but not checkpointed
        assert [r["epoch"] for r in __import__("json").loads(str(data["state"]))["history"]] == [1, 2]
    resumed, resumed_history = _tiny_run(state, resume=True)
    assert [w.shape for w in resumed.get_weights()] == [w.shape for w in whole.get_weights()]
    for a, b in zip(resumed.get_weights(), whole.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert len(resumed_history) == len(whole_history) == 3
    for got, want in zip(resumed_history, whole_history):
        assert got.keys() == want.keys() and got["best"] == want["best"] and got["epoch"] == want["epoch"]
        assert [got[k] for k in ("loss", "val_mre0", "val_mre1")] == pytest.approx(
            [want[k] for k in ("loss", "val_mre0", "val_mre1")], rel=1e-4)
    assert resumed_history[-1]["seconds"] >= resumed_history[1]["seconds"]  # training time adds up over the resume
    longer, longer_history = _tiny_run(state, resume=True, epochs=4)  # --epochs may grow
    assert len(longer_history) == 4
    with pytest.raises(CheckpointError, match="learning_rate 0.003 but this run asks for learning_rate 0.001"):
        _tiny_run(state, resume=True, learning_rate=1e-3)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        _tiny_run(tmp_path / "none.npz", resume=True)
    (tmp_path / "bad.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not readable"):
        _tiny_run(tmp_path / "bad.npz", resume=True)


def test_a_checkpoint_that_cannot_be_written_leaves_the_last_one_whole(tmp_path, monkeypatch):
    """A full disk while the state is written: one sentence, the previous epoch's checkpoint unchanged, no temporary
    file left beside it."""
    pytest.importorskip("keras")
    import errno

    from ivdseg.errors import IvdsegError

    state = tmp_path / "state.npz"
    _tiny_run(state, epochs=1)
    before = state.read_bytes()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(IvdsegError, match="could not be written.*free disk space"):
        _tiny_run(state, resume=True, epochs=2)
    assert state.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["state.npz"]
