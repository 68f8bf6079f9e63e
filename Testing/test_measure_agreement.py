"""The disc table of a model against the manual labels' table (`ivdseg evaluate-measurements`): known differences
on a drawn spine, the matching of discs, and the command on real slices with the bundled spine model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_data

from ivdseg import cli
from ivdseg.eval.measure_agreement import agreement, differences, matched_pairs, table_of
from ivdseg.io.geometry import stack_volume

CLASSES = [{"name": "intervertebral disc", "value": 1}, {"name": "vertebra", "value": 2},
           {"name": "spinal canal", "value": 3}]


def _spine(grow=0):
    """(image, labels) of 3 sagittal slices: four bodies 10 rows high, three discs 4 rows high between them (grown
    by ``grow`` rows above and below, taken from the bodies), a canal behind; DHI 4 / 10 = 0.4 as drawn."""
    labels = np.zeros((3, 60, 44), np.uint8)
    for top in (2, 16, 30, 44):
        labels[:, top:top + 10, 6:30] = 2
    for top in (12, 26, 40):
        labels[:, top - grow:top + 4 + grow, 6:30] = 1
    labels[:, :, 33:37] = 3
    image = np.choose(labels, [10, 150, 100, 250]).astype(np.float32)
    return stack_volume(image), stack_volume(labels)


def test_known_differences_of_a_drawn_spine():
    image, manual_labels = _spine()
    manual = table_of(manual_labels, image, CLASSES)
    assert len(manual) == 3 and all(abs(row.disc_height_index - 0.4) < 0.05 for _, row in manual)
    assert all(row.signal_reference == "spinal canal" and abs(row.signal_ratio - 0.6) < 0.01 for _, row in manual)
    same = differences(matched_pairs(manual, table_of(manual_labels, image, CLASSES)))
    assert all(agreement(v)["bias"] == 0 and agreement(v)["limits"] == [0, 0] for v in same.values())
    # discs drawn one row taller above and below (their signal unchanged: the same image): heights +2 rows, DHI up
    grown = differences(matched_pairs(manual, table_of(_spine(grow=1)[1], image, CLASSES)))
    height, dhi = agreement(grown["middle_height_mm"]), agreement(grown["disc_height_index"])
    assert height["n"] == 3 and 1.5 < height["bias"] < 2.5 and height["manual_mean"] == pytest.approx(4, abs=0.6)
    assert dhi["bias"] > 0.2 and dhi["limits"][0] > 0.1
    assert agreement(grown["ap_depth_mm"])["bias"] == pytest.approx(0, abs=0.5)


def test_discs_are_matched_by_centre_within_half_their_spacing():
    image, manual_labels = _spine()
    manual = table_of(manual_labels, image, CLASSES)
    model = manual_labels.array.copy()
    model[model == 1] = 0
    model[:, 26:30, 6:30] = 1  # only the middle disc found
    model[:, 55:59, 6:30] = 1  # and a disc below every manual one
    pairs = matched_pairs(manual, table_of(stack_volume(model), image, CLASSES))
    assert len(pairs) == 1 and pairs[0][0] is manual[1][1]
    assert matched_pairs(manual, []) == [] and matched_pairs([], manual) == []
    assert agreement([]) == {"n": 0, "bias": None, "limits": None, "mean_abs_difference": None, "manual_mean": None,
                             "manual_sd": None}
    # the signal ratio is compared only where both tables divide by the same reference
    without_canal = manual_labels.array.copy()
    without_canal[without_canal == 3] = 0
    values = differences(matched_pairs(manual, table_of(stack_volume(without_canal), image, CLASSES)))
    assert values["signal_ratio"] == [] and len(values["disc_height_index"]) == 3


def test_the_command_compares_the_spine_models_table_with_the_manual_one(tmp_path, capsys):
    """One SPIDER subject's slices (discs, vertebrae, canal labelled) with the bundled spine model: every disc
    matched, its height index and signal ratio near the manual ones (measured on the test patients: mean absolute
    difference 0.046 and 0.024, against a spread between discs of 0.114 and 0.085)."""
    pytest.importorskip("onnxruntime")
    root = require_data("spider_t2_2d")
    spec = {"classes": ["intervertebral disc", "vertebra", "spinal canal"], "sources": [{
        "name": "spider", "kind": "slices", "root": str(root), "images": "images/5_t2_SPACE_slice*.png",
        "labels": "labels/{name}", "patient_pattern": r"^(\d+)_", "classes": {
            "vertebra": [1], "intervertebral disc": [2], "spinal canal": [3]}}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert cli.main([str(a) for a in ["export", tmp_path / "ds", "--spec", tmp_path / "spec.json", "--sizes", "64",
                                      "--val-fraction", "0.5", "--test-fraction", "0", "--progress", "none"]]) == 0
    assert cli.main([str(a) for a in ["evaluate-measurements", tmp_path / "ds", "--model", "ivd-spine-2d", "--split",
                                      "all", "--backend", "onnx", "--json", tmp_path / "m.json"]]) == 0
    out = capsys.readouterr().out
    assert "disc_height_index" in out and "signal_ratio" in out and "model minus manual" in out
    result = json.loads((tmp_path / "m.json").read_text())["per_source"]["spider"]
    assert result["discs"] >= 6 and result["matched"] == result["discs"] and result["unit"] == "px"
    dhi, signal = result["measures"]["disc_height_index"], result["measures"]["signal_ratio"]
    assert dhi["n"] >= 6 and dhi["mean_abs_difference"] < 0.1 and abs(dhi["bias"]) < 0.05
    assert signal["n"] >= 6 and signal["mean_abs_difference"] < 0.05


def test_a_dataset_or_model_without_discs_is_one_sentence(tmp_path, capsys):
    root = require_data("spider_t2_2d")
    spec = {"classes": ["vertebra"], "sources": [{
        "name": "spider", "kind": "slices", "root": str(root), "images": "images/5_t2_SPACE_slice5*.png",
        "labels": "labels/{name}", "patient_pattern": r"^(\d+)_", "classes": {"vertebra": [1]}}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert cli.main([str(a) for a in ["export", tmp_path / "ds", "--spec", tmp_path / "spec.json", "--sizes", "64",
                                      "--val-fraction", "0.5", "--test-fraction", "0", "--progress", "none"]]) == 0
    assert cli.main([str(a) for a in ["evaluate-measurements", tmp_path / "ds", "--split", "all", "--backend",
                                      "onnx"]]) == 2
    assert "has no 'intervertebral disc' class; the disc table measures discs" in capsys.readouterr().err
    assert cli.main([str(a) for a in ["evaluate-measurements", tmp_path / "ds", "--split", "test"]]) == 2
    assert "has no test patients" in capsys.readouterr().err
    assert cli.main([str(a) for a in ["evaluate-measurements", tmp_path / "ds", "--split", "all", "--record"]]) == 2
    assert "--record writes the test patients' figures" in capsys.readouterr().err
