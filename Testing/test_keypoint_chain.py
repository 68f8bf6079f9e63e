"""Heatmaps decoded as one chain (ivdseg.inference.keypoint_chain): the fitted steps, the peak that fits its
neighbours winning over a stronger one that does not, a fixed point pulling its neighbours' choice, the choice made
on validation, and ``ivdseg fit-chain``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ivdseg.cli import main
from ivdseg.errors import IvdsegError
from ivdseg.inference.keypoint_chain import ChainPrior, chain_decode, fit_chain_prior, peak_candidates
from ivdseg.inference.keypoints import decode_heatmaps, gaussian

SHAPE = (96, 48)


def _chain(start_row=10.0, step=(15.0, 0.0), k=5, column=20.0):
    return np.array([[start_row + i * step[0], column + i * step[1]] for i in range(k)])


def _heatmaps(peaks_per_keypoint, sigma=2.0):
    """(H, W, K): each keypoint's map the maximum of Gaussians of the given heights, [(row, col, height), ...]."""
    out = np.zeros((*SHAPE, len(peaks_per_keypoint)), np.float32)
    for k, peaks in enumerate(peaks_per_keypoint):
        for r, c, height in peaks:
            out[..., k] = np.maximum(out[..., k], height * gaussian(SHAPE, (r, c), sigma))
    return out


def test_the_prior_is_the_mean_step_between_neighbours_with_a_floor_on_its_spread():
    rng = np.random.default_rng(0)
    points = np.stack([_chain(10 + rng.normal(0, 3)) + rng.normal(0, 1.0, (5, 2)) for _ in range(200)])
    prior = fit_chain_prior(points)
    np.testing.assert_allclose(prior.mean, [[15.0, 0.0]] * 4, atol=0.35)
    variances = np.diagonal(prior.cov, axis1=1, axis2=2)
    assert np.all(variances > 4.0) and np.all(variances < 4.0 + 2 * 2.0 + 1.0)  # floor 2 px + two points' noise
    same = fit_chain_prior(np.stack([_chain()] * 3))  # identical samples: the floor alone, still invertible
    np.testing.assert_allclose(same.cov, [np.eye(2) * 4.0] * 4)
    with pytest.raises(ValueError, match="at least two samples"):
        fit_chain_prior(points[:1])


def test_a_peak_that_fits_its_neighbours_beats_a_stronger_one_that_does_not():
    truth = _chain()
    peaks = [[(r, c, 0.9)] for r, c in truth]
    peaks[2] = [(truth[2, 0], truth[2, 1], 0.5), (85.0, 40.0, 0.95)]  # the arg-max is far off the chain
    heatmaps = _heatmaps(peaks)
    plain, _ = decode_heatmaps(heatmaps)
    assert np.linalg.norm(plain[2] - [85.0, 40.0]) < 0.5  # one peak each: the stronger
    prior = fit_chain_prior(np.stack([_chain(10 + d) for d in range(-3, 4)]))
    points, values = chain_decode(heatmaps, prior)
    np.testing.assert_allclose(points, truth, atol=0.3)
    assert values[2] == pytest.approx(0.5, abs=0.02)
    # with no weight on the shape, the chain is the arg-max of each map again
    np.testing.assert_allclose(chain_decode(heatmaps, prior.with_weight(0.0))[0], plain, atol=1e-9)


def test_a_fixed_point_pulls_the_choice_of_its_neighbours_peaks():
    """Every map has a peak at its own level and, as strong, one level down: the unfixed chain may take either;
    the user's fix of the first point decides for all of them."""
    truth = _chain()
    peaks = [[(r, c, 0.8), (r + 15.0, c, 0.8)] for r, c in truth]
    prior = fit_chain_prior(np.stack([_chain(10 + d) for d in range(-3, 4)]))
    fixed = np.full((5, 2), np.nan)
    for start in (truth[0], truth[0] + [15.0, 0.0]):
        fixed[0] = start
        points, values = chain_decode(_heatmaps(peaks), prior, fixed)
        np.testing.assert_allclose(points, truth + (start - truth[0]), atol=0.3)
        assert values[0] == 1.0 and np.array_equal(points[0], start)  # the fixed point exactly where it was put


def test_candidates_are_the_strongest_local_peaks_refined_and_a_flat_map_still_gives_one():
    heatmap = _heatmaps([[(30.3, 20.6, 0.9), (60.0, 10.0, 0.5), (80.0, 40.0, 0.7)]])[..., 0]
    points, values = peak_candidates(heatmap, most=2)
    np.testing.assert_allclose(points, [[30.3, 20.6], [80.0, 40.0]], atol=0.05)
    assert list(values) == sorted(values, reverse=True) and len(values) == 2
    points, values = peak_candidates(np.zeros(SHAPE))
    assert points.shape == (1, 2) and values.shape == (1,)


def test_the_card_entry_round_trips_and_a_wrong_size_is_refused():
    prior = fit_chain_prior(np.stack([_chain(10 + d) for d in range(3)]), weight=0.3)
    card = {"keypoints": list("abcde"), "decode": json.loads(json.dumps(prior.to_card()))}
    again = ChainPrior.from_card(card)
    np.testing.assert_allclose(again.mean, prior.mean)
    np.testing.assert_allclose(again.cov, prior.cov, atol=1e-4)
    assert again.weight == 0.3 and ChainPrior.from_card({"keypoints": ["a"]}) is None
    assert ChainPrior.from_card({"keypoints": ["a"], "decode": {"method": "peaks"}}) is None
    with pytest.raises(ValueError, match="fits 5 keypoints, the model has 4"):
        ChainPrior.from_card({**card, "keypoints": list("abcd")})


def test_validation_chooses_the_chain_where_one_peak_each_goes_astray():
    from ivdseg.eval.keypoints_eval import choose_decoding

    truth = np.stack([_chain(10 + d) for d in range(4)])
    decoy = [(85.0, 40.0, 0.95)]

    def run(x):  # a "network" whose third map has a stronger peak off the chain, hint or not
        return np.stack([_heatmaps([[(r, c, 0.9 if k != 2 else 0.5)] + (decoy if k == 2 else [])
                                    for k, (r, c) in enumerate(t)]) for t in truth[:len(x)]])

    images = np.zeros((len(truth), *SHAPE, 1), np.float32)
    chain, entry = choose_decoding(run, truth, images, truth, sigma_px=2.0)
    assert entry["method"] == "chain" and chain is not None and chain.weight == entry["weight"]
    scores = entry["validation_mre_px"]
    assert scores[f"chain {entry['weight']:g}"] == min(scores.values()) < scores["peaks"]
    assert "validation" in entry["chosen_by"] and entry["fitted_on_samples"] == 4

    def clean(x):
        return np.stack([_heatmaps([[(r, c, 0.9)] for r, c in t]) for t in truth[:len(x)]])

    chain, entry = choose_decoding(clean, truth, images, truth, sigma_px=2.0)  # a tie: the simpler way is kept
    assert chain is None and entry["method"] == "peaks"


def test_fit_chain_writes_a_new_package_whose_predictions_use_the_chain(tmp_path, capsys):
    pytest.importorskip("keras")
    from test_keypoint_commands import NAMES, _package

    from ivdseg.data.keypoint_data import RawSample, write_dataset
    from ivdseg.inference.backends import load_backend
    from ivdseg.inference.keypoint_predict import KeypointPredictor
    from ivdseg.models.package import read_card

    package = _package(tmp_path / "tiny", "image")
    before = {f.name: f.read_bytes() for f in package.iterdir()}
    rng = np.random.default_rng(3)
    samples = [RawSample("s", f"p{i}", rng.random((128, 64)).astype(np.float32),
                         np.array([[20.0 + 25 * k, 30.0 + rng.normal(0, 2)] for k in range(4)])) for i in range(9)]
    write_dataset(tmp_path / "ds", NAMES, samples, (64, 32), val_fraction=0.25, test_fraction=0.25)
    out = tmp_path / "chained"
    assert main(["fit-chain", str(package), str(tmp_path / "ds"), "-o", str(out), "--model-version", "0.2.0"]) == 0
    assert "decoding (validation" in capsys.readouterr().out
    card = read_card(out)
    decode = card["decode"]
    assert card["version"] == "0.2.0" and decode["method"] in ("chain", "peaks") and "peaks" in decode["validation_mre_px"]
    assert set(card["validation"]["per_source"]) == set(card["test"]["per_source"]) == {"s"}
    assert {f.name: f.read_bytes() for f in package.iterdir()} == before  # the source package is untouched
    assert (out / "model.onnx").read_bytes() == before["model.onnx"] and "Decoding" in (out / "MODEL_CARD.md").read_text()
    # the predictor decodes as the card says: a chain entry forced in gives the chain's points
    prior = fit_chain_prior(np.stack([s.points_rc for s in samples]) * 0.5)  # the letterbox halves 128 x 64 to 64 x 32
    (out / "model.json").write_text(json.dumps({**card, "decode": prior.to_card()}))
    predictor = KeypointPredictor(load_backend(out, "onnx"))
    assert predictor.chain is not None and predictor.chain.weight == 1.0
    points, peaks = predictor.predict(samples[0].image, {1: (45.0, 30.0)})
    assert np.array_equal(points[1], [45.0, 30.0]) and peaks[1] == 1.0
    (out / "model.json").write_text(json.dumps({**card, "decode": {"method": "chain", "weight": 1}}))
    with pytest.raises(IvdsegError, match="damaged 'decode' entry"):
        KeypointPredictor(load_backend(out, "onnx"))
    # an occupied folder is refused; a dataset of other keypoints too
    assert main(["fit-chain", str(package), str(tmp_path / "ds"), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    write_dataset(tmp_path / "other", NAMES[:3], [RawSample("s", s.patient, s.image, s.points_rc[:3]) for s in samples],
                  (64, 32), val_fraction=0.25, test_fraction=0.25)
    assert main(["fit-chain", str(package), str(tmp_path / "other"), "-o", str(tmp_path / "x")]) == 2
    assert "other keypoints" in capsys.readouterr().err and not (tmp_path / "x").exists()
