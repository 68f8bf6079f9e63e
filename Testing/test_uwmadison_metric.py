"""The UW-Madison GI tract challenge score (0.4 x 2D Dice + 0.6 x (1 - normalised 3D Hausdorff distance)) on hand-made
volumes whose distances are worked out by hand, and Dice, IoU and that score of ``score_predictions`` on tiny
hand-made datasets of both label encodings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ivdseg.data import dataset as ds
from ivdseg.eval import metrics
from ivdseg.eval.evaluate import choose_postprocessing, score_predictions, stack_spacing


def _voxels(shape, *points):
    mask = np.zeros(shape, bool)
    for p in points:
        mask[p] = True
    return mask


# ---------------------------------------------------------------- the 3D Hausdorff distance
def test_two_voxels_three_apart_in_a_4x4x4_volume():
    a, b = _voxels((4, 4, 4), (0, 0, 0)), _voxels((4, 4, 4), (3, 0, 0))
    assert metrics.hausdorff_distance(a, b) == pytest.approx(3.0)
    assert metrics.normalised_hausdorff(a, b) == pytest.approx(3 / math.sqrt(48))  # diagonal sqrt(4² + 4² + 4²)


def test_anisotropic_spacing_scales_each_axis_and_the_diagonal():
    # (0, 0, 0) and (2, 0, 4) with voxels 3 x 1.5 x 1.5 mm: 6 mm apart along each of two axes
    a, b = _voxels((3, 5, 5), (0, 0, 0)), _voxels((3, 5, 5), (2, 0, 4))
    spacing = (3.0, 1.5, 1.5)
    assert metrics.hausdorff_distance(a, b, spacing) == pytest.approx(math.sqrt(72))
    diagonal = math.sqrt(9.0 ** 2 + 7.5 ** 2 + 7.5 ** 2)  # (3 x 3, 5 x 1.5, 5 x 1.5) mm
    assert metrics.normalised_hausdorff(a, b, spacing) == pytest.approx(math.sqrt(72) / diagonal)


def test_the_distance_is_the_maximum_of_both_directions_not_a_percentile():
    a = np.zeros((1, 20, 20), bool)
    a[0, 5:10, 5:10] = True
    b = a.copy()
    b[0, 19, 19] = True  # one stray voxel of the prediction, far from the truth
    assert metrics.hausdorff_distance(a, b) == pytest.approx(math.sqrt(2 * 10 ** 2))  # nearest truth voxel (9, 9)
    assert metrics.hausdorff_distance(b, a) == metrics.hausdorff_distance(a, b)  # symmetric
    assert metrics.hausdorff_95(a[0], b[0]) < 1.5  # the 95th percentile hides the stray voxel


def test_voxels_inside_both_masks_add_nothing():
    # truth: a 5 x 5 x 5 block; prediction: the same block without its centre voxel, which is 1 from the prediction
    a = np.zeros((7, 7, 7), bool)
    a[1:6, 1:6, 1:6] = True
    b = a.copy()
    b[3, 3, 3] = False
    assert metrics.hausdorff_distance(a, b) == pytest.approx(1.0)
    assert metrics.hausdorff_distance(a, a) == 0.0


def test_hausdorff_matches_brute_force_over_all_voxel_pairs():
    rng = np.random.default_rng(4)
    spacing = np.array([2.5, 0.7, 1.1])
    for _ in range(5):
        a, b = rng.random((2, 5, 9, 8)) > 0.93
        pa, pb = np.argwhere(a) * spacing, np.argwhere(b) * spacing
        d = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
        expected = max(d.min(axis=1).max(), d.min(axis=0).max())
        assert metrics.hausdorff_distance(a, b, spacing) == pytest.approx(expected)


def test_empty_masks_both_perfect_one_worst():
    empty, one = np.zeros((2, 4, 4), bool), _voxels((2, 4, 4), (1, 2, 2))
    assert metrics.normalised_hausdorff(empty, empty) == 0.0
    assert metrics.normalised_hausdorff(one, empty) == 1.0
    assert metrics.normalised_hausdorff(empty, one) == 1.0
    assert math.isnan(metrics.hausdorff_distance(one, empty))
    terms = metrics.uw_madison_case(np.zeros((2, 4, 4), np.uint8), one.astype(np.uint8), 2)
    dice, hd = terms[1]
    assert dice.tolist() == [1.0, 0.0] and hd == 1.0  # slice 0 empty on both sides, slice 1 predicted only


def test_square_pixels_in_mm_give_the_challenge_figure_in_voxels():
    """Unknown slice spacing: slices one mean pixel spacing apart, which is the challenge's voxel-unit figure."""
    a, b = _voxels((6, 8, 8), (0, 1, 1), (2, 2, 2)), _voxels((6, 8, 8), (5, 7, 1))
    spacing, kind = stack_spacing((1.5, 1.5), float("nan"))
    assert spacing == (1.5, 1.5, 1.5) and kind == "mm_in_plane"
    assert metrics.normalised_hausdorff(a, b, spacing) == pytest.approx(metrics.normalised_hausdorff(a, b))


@pytest.mark.parametrize("pixel, step, expected", [
    ((0.8, 0.6), 4.0, ((4.0, 0.8, 0.6), "mm")),
    ((0.8, 0.6), float("nan"), ((0.7, 0.8, 0.6), "mm_in_plane")),
    ((float("nan"), float("nan")), 4.0, ((1.0, 1.0, 1.0), "voxels")),  # mm between slices, pixels unknown: voxels
    (None, None, ((1.0, 1.0, 1.0), "voxels")),
])
def test_stack_spacing(pixel, step, expected):
    spacing, kind = stack_spacing(pixel, step)
    assert kind == expected[1] and spacing == pytest.approx(expected[0])


# ---------------------------------------------------------------- the 2D Dice term and the score
def test_slice_dice_averages_per_slice_with_empty_slices_counting_one():
    truth = np.zeros((4, 3, 3), np.uint8)
    pred = np.zeros((4, 3, 3), np.uint8)
    truth[0, :2, :2] = 1  # 4 pixels
    pred[0, 0, :2] = 1  # 2 of them: Dice 2 x 2 / (4 + 2) = 2/3
    truth[2, 1, 1] = 1  # missed: Dice 0; slices 1 and 3 empty on both sides: 1
    dice, _ = metrics.uw_madison_case(truth, pred, 2)[1]
    assert dice.tolist() == pytest.approx([2 / 3, 1.0, 0.0, 1.0])
    assert dice.mean() == pytest.approx(2 / 3)
    assert metrics.uw_madison_score(2 / 3, 0.25) == pytest.approx(0.4 * 2 / 3 + 0.6 * 0.75)


def test_overlapping_bits_score_each_class_on_its_own_mask():
    # pixel 0 holds both classes (0b11) in the truth, pixel 1 only class 1; the prediction swaps them
    truth = np.array([[[0b11, 0b01]]], np.uint8)
    pred = np.array([[[0b01, 0b11]]], np.uint8)
    counts = metrics.class_counts(truth, pred, 3, overlapping=True)
    assert counts[1].tolist() == [2, 2, 2]  # class 1 on both pixels on both sides
    assert counts[2].tolist() == [0, 1, 1]  # class 2: pixel 0 against pixel 1
    terms = metrics.uw_madison_case(truth, pred, 3, overlapping=True)
    assert terms[1][0].tolist() == [1.0] and terms[1][1] == 0.0
    assert terms[2][0].tolist() == [0.0] and terms[2][1] == pytest.approx(1 / math.sqrt(1 + 1 + 4))
    with pytest.raises(ValueError, match="bits of classes 1..2"):
        metrics.class_counts(truth | 0b100, pred, 3, overlapping=True)
    assert metrics.class_counts(truth, truth, 4, overlapping=False)[3].tolist() == [1, 1, 1]  # read as value 3


# ---------------------------------------------------------------- score_predictions end to end
def _dataset(tmp_path, classes, overlapping, cases):
    """A DatasetInfo over hand-written ``cases/<case>.npz``: cases = {case: (source, labelled classes, label,
    pixel spacing, slice spacing)}."""
    (tmp_path / "cases").mkdir()
    meta = {}
    for case, (source, labelled, label, pixel, step) in cases.items():
        np.savez_compressed(tmp_path / "cases" / f"{case}.npz", image=np.zeros(label.shape, np.float32), label=label,
                            pixel_spacing_mm=np.asarray(pixel, np.float64), slice_spacing_mm=np.float64(step))
        meta[case] = {"patient": case.split("-")[0], "source": source, "n_slices": len(label),
                      "labelled_classes": labelled}
    return ds.DatasetInfo(root=tmp_path, classes=classes, sizes=[64], cases=meta, overlapping=overlapping)


def test_score_predictions_exclusive_dataset_by_hand(tmp_path):
    nan = float("nan")
    t1 = np.zeros((2, 4, 4), np.uint8)
    t1[0, 0, 0], t1[1, 3, 3] = 1, 2
    p1 = np.zeros_like(t1)
    p1[0, 0, 0] = p1[1, 0, 0] = 1  # class 1 also on slice 1, 2 mm away; class 2 missed
    t2 = np.zeros((1, 3, 3), np.uint8)
    t2[0, 1, 1] = 1
    info = _dataset(tmp_path, ["background", "a", "b"], False, {
        "p1-0": ("s1", [1, 2], t1, (1.0, 1.0), 2.0),
        "p2-0": ("s2", [1], t2, (nan, nan), nan),  # s2 does not label "b"; its spacing is unknown
    })
    result = score_predictions([("p1-0", t1, p1), ("p2-0", t2, t2.copy())], info)
    overall = result["overall"]
    assert overall["dice"] == {"a": 0.8, "b": 0.0}  # a: 2 x 2 / (2 + 3)
    assert result["per_source"]["s2"]["dice"]["b"] is None
    assert overall["volume_ratio"] == {"a": 1.5, "b": 0.0}  # a: 3 voxels drawn for 2; b: none drawn for 1
    assert result["per_source"]["s2"]["volume_ratio"] == {"a": 1.0, "b": None}
    hd_a = 2 / math.sqrt(48)  # p1, class a: 2 mm over the diagonal of (2 x 2, 4, 4) mm
    uw = overall["uw_madison"]
    # (slice, class) pairs: p1 a: 1, 0; p1 b: 1 (both empty), 0; p2 a: 1 -> 3/5. (case, class): hd_a, 1, 0
    assert uw["dice_2d"] == pytest.approx(3 / 5, abs=1e-4)
    assert uw["hausdorff_norm"] == pytest.approx((hd_a + 1) / 3, abs=1e-4)
    assert uw["score"] == pytest.approx(0.4 * 3 / 5 + 0.6 * (1 - (hd_a + 1) / 3), abs=1e-4)
    assert uw["per_class"]["a"] == pytest.approx(
        {"score": 0.4 * 2 / 3 + 0.6 * (1 - hd_a / 2), "dice_2d": 2 / 3, "hausdorff_norm": hd_a / 2}, abs=1e-4)
    assert uw["per_class"]["b"] == pytest.approx({"score": 0.2, "dice_2d": 0.5, "hausdorff_norm": 1.0})
    assert uw["cases"] == 2 and uw["spacing"] == {"mm": 1, "mm_in_plane": 0, "voxels": 1}
    s2 = result["per_source"]["s2"]["uw_madison"]
    assert s2["per_class"] == {"a": {"score": 1.0, "dice_2d": 1.0, "hausdorff_norm": 0.0}, "b": None}
    assert "uw_madison" not in score_predictions([("p2-0", t2, t2)], info, uw_metric=False)["overall"]


def test_score_predictions_overlapping_dataset_by_hand(tmp_path):
    truth = np.zeros((2, 3, 3), np.uint8)
    truth[0, 1, 1], truth[0, 1, 2], truth[1, 1, 1] = 0b11, 0b01, 0b10
    pred = np.zeros_like(truth)
    pred[0, 1, 1] = pred[0, 1, 2] = 0b11
    info = _dataset(tmp_path, ["background", "stomach", "bowel"], True,
                    {"p1-0": ("uw", [1, 2], truth, (1.5, 1.5), float("nan"))})
    overall = score_predictions([("p1-0", truth, pred)], info)["overall"]
    assert overall["dice"] == {"stomach": 1.0, "bowel": 0.5}  # bowel: overlap 1 of 2 and 2
    assert overall["iou"] == {"stomach": 1.0, "bowel": round(1 / 3, 4)}
    # bowel: slice Dice 2/3 and 0; 1.5 mm (one pixel, or one slice taken as 1.5 mm) over 1.5 x sqrt(2² + 3² + 3²)
    hd = 1 / math.sqrt(22)
    uw = overall["uw_madison"]
    assert uw["dice_2d"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4, abs=1e-4)
    assert uw["hausdorff_norm"] == pytest.approx(hd / 2, abs=1e-4)
    assert uw["score"] == pytest.approx(0.4 * (8 / 3) / 4 + 0.6 * (1 - hd / 2), abs=1e-4)
    assert uw["per_class"]["stomach"] == {"score": 1.0, "dice_2d": 1.0, "hausdorff_norm": 0.0}
    assert uw["spacing"] == {"mm": 0, "mm_in_plane": 1, "voxels": 0}


def test_overlapping_post_processing_clears_only_the_small_component_s_bit(tmp_path):
    truth = np.zeros((1, 6, 6), np.uint8)
    truth[0, :3, :3] = 0b01
    truth[0, 3:, 3:] = 0b10
    pred = truth.copy()
    pred[0, 0, 0] = 0b11  # a stray one-pixel bowel component on the stomach
    info = _dataset(tmp_path, ["background", "stomach", "bowel"], True,
                    {"p1-0": ("uw", [1, 2], truth, (1.0, 1.0), 1.0)})
    card = {"classes": [{"name": "stomach"}, {"name": "bowel"}],  # no "overlapping": the dataset says it
            "postprocessing": {"enabled": True, "min_component_fraction": 0.5}}
    raw = score_predictions([("p1-0", truth, pred)], info)["overall"]
    cleaned = score_predictions([("p1-0", truth, pred)], info, card)["overall"]
    assert raw["dice"] == {"stomach": 1.0, "bowel": round(2 * 9 / 19, 4)}
    assert cleaned["dice"] == {"stomach": 1.0, "bowel": 1.0}
    assert cleaned["uw_madison"]["score"] == 1.0 and raw["uw_madison"]["score"] < 1.0
    chosen = choose_postprocessing([("p1-0", truth, pred)], info, card)
    assert chosen["enabled"] and chosen["val_mean_dice_with"] == 1.0


def test_evaluate_prints_a_uw_madison_line_per_source(tmp_path, capsys):
    from ivdseg.commands.training import _print_uw_madison

    t = np.zeros((1, 3, 3), np.uint8)
    t[0, 1, 1] = 1
    info = _dataset(tmp_path, ["background", "a"], False, {"p1-0": ("s1", [1], t, (1.0, 1.0), float("nan"))})
    result = score_predictions([("p1-0", t, t)], info)
    _print_uw_madison([("all", result["overall"]), *result["per_source"].items()], ["a"], [8])
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["source", "cases", "score", "Dice", "2D", "HD/diag", "a"]
    assert out[2].split() == ["all", "1", "1.0000", "1.0000", "0.0000", "1.0000"]
    assert out[3].split()[0] == "s1"
    assert "1 case in mm with slices one mean pixel spacing apart" in out[4]
