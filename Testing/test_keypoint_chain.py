"""Heatmaps decoded as one chain or tree (ivdseg.inference.keypoint_chain): the fitted steps, the peak that fits its
neighbours winning over a stronger one that does not, a fixed point pulling its neighbours' choice, the exact optimum
of a chain and of columns against every combination, the columns found from the keypoint names, the choice made on
validation, and ``ivdseg fit-chain``."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from ivdseg.cli import main
from ivdseg.errors import IvdsegError
from ivdseg.inference.keypoint_chain import (ChainPrior, chain_decode, chain_parents, column_parents, fit_chain_prior,
                                             peak_candidates)
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


def _grid(levels=3, parts=2, start_row=12.0):
    """(levels * parts, 2) points: level l, part p at row start + 25 l, column 10 + 18 p (package order)."""
    return np.array([[start_row + 25.0 * lv, 10.0 + 18.0 * p] for lv in range(levels) for p in range(parts)])


@pytest.mark.parametrize("structure", ["chain", "columns"])
def test_the_decoding_is_the_exact_optimum_over_every_combination_of_candidates(structure):
    rng = np.random.default_rng(3)
    truth = _grid()
    k = len(truth)
    parents = chain_parents(k) if structure == "chain" else column_parents(
        [f"L{lv} {p}" for lv in range(3) for p in ("front", "back")])
    prior = fit_chain_prior(np.stack([truth + rng.normal(0, 1.5, truth.shape) for _ in range(20)]), 0.7, parents)
    assert prior.parents == parents
    peaks = [[(r + rng.normal(0, 2), c + rng.normal(0, 2), rng.uniform(0.3, 1.0)) for r, c in
              (point, point + rng.normal(0, 9, 2), point + [25.0, 0.0])] for point in truth]
    heatmaps = _heatmaps(peaks)
    candidates = [peak_candidates(heatmaps[..., n]) for n in range(k)]
    precision = np.linalg.inv(prior.cov)

    def cost(choice):
        total = sum(-np.log(np.clip(candidates[n][1][i], 1e-6, 1.0)) for n, i in enumerate(choice))
        for n in range(1, k):
            step = candidates[n][0][choice[n]] - candidates[parents[n]][0][choice[parents[n]]] - prior.mean[n - 1]
            total += prior.weight * 0.5 * step @ precision[n - 1] @ step
        return total

    best = min(itertools.product(*[range(len(c[1])) for c in candidates]), key=cost)
    points, _ = chain_decode(heatmaps, prior)
    np.testing.assert_allclose(points, [candidates[n][0][i] for n, i in enumerate(best)])


def test_columns_come_from_names_in_levels_of_the_same_parts():
    corners = [f"{v} {c}" for v in ("T1", "T2", "T3") for c in ("upper left", "upper right", "lower left")]
    assert column_parents(corners) == [-1, 0, 1, 0, 1, 2, 3, 4, 5]  # the first level a chain, then the level above
    assert column_parents(["L1-L2", "L2-L3", "L3-L4"]) is None  # one part a level: the chain already
    assert column_parents(["T1 a", "T1 b", "T2 a", "T2 c"]) is None  # parts differ between levels
    assert column_parents(["T1 a", "T2 a", "T1 b", "T2 b"]) is None  # levels interleaved
    assert column_parents(["T1 a", "T1 b"]) is None  # one level
    with pytest.raises(ValueError, match="not a tree"):
        fit_chain_prior(np.stack([_grid()] * 2), parents=[-1, 0, 1, 5, 2, 3])  # a parent after its child


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
    assert "parents" not in card["decode"]  # a chain: the entry of cards written before the columns
    names = [f"L{lv} {p}" for lv in range(3) for p in ("front", "back")]
    columns = fit_chain_prior(np.stack([_grid(start_row=r) for r in (10, 12, 15)]), 1.0, column_parents(names))
    entry = json.loads(json.dumps(columns.to_card()))
    assert entry["parents"] == column_parents(names)
    assert ChainPrior.from_card({"keypoints": names, "decode": entry}).parents == column_parents(names)
    with pytest.raises(ValueError, match="not a tree"):
        ChainPrior.from_card({"keypoints": names, "decode": {**entry, "parents": [-1, 0, 0, 1, 2]}})


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


def test_validation_chooses_columns_where_the_parts_move_together_level_by_level():
    """The width between a level's two parts differs from sample to sample but not from level to level: the chain's
    steps (front to back, back to the next front) spread with it, the columns' (front to front) do not. A decoy
    10 px beside one front point, stronger than the true peak, fools the chain at every weight, not the columns."""
    from ivdseg.eval.keypoints_eval import choose_decoding

    names = [f"L{lv} {p}" for lv in range(3) for p in ("front", "back")]
    truth = np.stack([[[12.0 + 25 * lv, 4.0 + p * width] for lv in range(3) for p in range(2)]
                      for width in (6.0, 18.0, 30.0, 42.0)])

    def run(x):
        return np.stack([_heatmaps([[(r, c, 0.2 if k == 4 else 0.9)] + ([(r, c + 10.0, 0.99)] if k == 4 else [])
                                    for k, (r, c) in enumerate(t)]) for t in truth[:len(x)]])

    images = np.zeros((len(truth), *SHAPE, 1), np.float32)
    prior, entry = choose_decoding(run, truth, images, truth, sigma_px=2.0, names=names)
    scores = entry["validation_mre_px"]
    assert entry["structure"] == "columns" and entry["parents"] == column_parents(names) == prior.parents
    assert min(v for n, v in scores.items() if n.startswith("columns")) < min(
        v for n, v in scores.items() if not n.startswith("columns"))
    assert not any(n.startswith("columns") for n in choose_decoding(run, truth, images, truth, 2.0)[1][
        "validation_mre_px"])  # without the names, no columns to try


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
    for damaged in ({"method": "chain", "weight": 1}, {**prior.to_card(), "parents": [-1, 0, 3, 1]}):
        (out / "model.json").write_text(json.dumps({**card, "decode": damaged}))
        with pytest.raises(IvdsegError, match="damaged 'decode' entry"):
            KeypointPredictor(load_backend(out, "onnx"))
    # an occupied folder is refused; a dataset of other keypoints too
    assert main(["fit-chain", str(package), str(tmp_path / "ds"), "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    # disc centres are one point a level: no columns to tie
    assert main(["fit-chain", str(package), str(tmp_path / "ds"), "-o", str(tmp_path / "y"), "--structure",
                 "columns"]) == 2
    assert "--structure columns needs them" in capsys.readouterr().err and not (tmp_path / "y").exists()
    write_dataset(tmp_path / "other", NAMES[:3], [RawSample("s", s.patient, s.image, s.points_rc[:3]) for s in samples],
                  (64, 32), val_fraction=0.25, test_fraction=0.25)
    assert main(["fit-chain", str(package), str(tmp_path / "other"), "-o", str(tmp_path / "x")]) == 2
    assert "other keypoints" in capsys.readouterr().err and not (tmp_path / "x").exists()
