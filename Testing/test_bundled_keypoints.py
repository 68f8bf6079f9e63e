"""The bundled disc-centre keypoint model (the Correct points mode) on a test patient it never saw: its card, its
points against the per-level labels, and a fixed point kept exactly while the others stay on their discs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_data

from ivdseg.cli import main
from ivdseg.io.markups import read_points
from ivdseg.models.package import read_card, resolve_model

LEVELS = ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
# case25 is a test patient of this model (the same split as the disc model's): measured 0.8 mm mean in-plane error
# before any correction; the bound leaves room for rounding, not for a model that misses a disc (~30 mm apart).
CENTRE_ERROR_BOUND_MM = 3.0


def test_card_is_complete():
    card = read_card(resolve_model("ivd-disc-centres-2d"))
    assert card["task"] == "keypoints" and card["keypoints"] == LEVELS and card["slice_plane"] == "sagittal"
    assert card["parameters"] < 3e6 and card["training"]["mode"] in ("revise", "prompt")
    test = card["test"]["per_source"]
    assert {s: (e["cases"], e["unit"]) for s, e in test.items()} == {"ivd_lumbar_t2": (1, "mm"), "spider": (5, "px")}
    assert all(len(e["model"]) == len(e["manual"]) == 4 for e in test.values())
    assert card["citations"] and card["licence"] and any("recipes" in r for r in card["reproduce"])
    size = sum(f.stat().st_size for f in resolve_model("ivd-disc-centres-2d").iterdir())
    assert size < 20e6
    assert read_card(resolve_model())["keypoint_model"] == "ivd-disc-centres-2d"


def _true_centres(image):
    from ivdseg.io.geometry import sagittal_slices
    from ivdseg.io.volumes import read_volume

    labels, _ = sagittal_slices(read_volume(require_data("ivd_lumbar_t2") / "nifti/case25_ivd_labels.nii.gz"))
    values = {"L5-S1": 1, "L4-L5": 2, "L3-L4": 3, "L2-L3": 4, "L1-L2": 5}
    rc = np.array([np.argwhere(labels == values[level]).mean(axis=0)[1:] for level in LEVELS])
    return image.to_ras(rc)


def test_disc_centres_of_a_test_patient_and_a_fixed_point(tmp_path):
    pytest.importorskip("onnxruntime")
    from ivdseg.inference.keypoint_predict import mid_sagittal
    from ivdseg.io.volumes import read_volume

    case = require_data("ivd_lumbar_t2") / "nifti/case25_T2w.nii.gz"
    image = mid_sagittal(read_volume(case))
    truth = _true_centres(image)
    out = tmp_path / "discs.mrk.json"
    assert main(["keypoints", str(case), "--model", "ivd-disc-centres-2d", "-o", str(out), "--progress", "none"]) == 0
    found = np.array([p.ras for p in read_points(out)])
    assert [p.label for p in read_points(out)] == LEVELS
    errors = np.linalg.norm(found - truth, axis=1)
    assert errors.mean() < CENTRE_ERROR_BOUND_MM, errors

    fix = ",".join(f"{v:.3f}" for v in truth[2])
    assert main(["keypoints", str(case), "--model", "ivd-disc-centres-2d", "-o", str(out), "--overwrite",
                 "--fix", f"L3-L4={fix}", "--progress", "none"]) == 0
    points = read_points(out)
    assert points[2].locked and np.allclose(points[2].ras, truth[2], atol=1e-3)
    errors = np.linalg.norm(np.array([p.ras for p in points]) - truth, axis=1)
    assert errors.mean() < CENTRE_ERROR_BOUND_MM, errors


def test_the_self_test_scenario_corrects_points_with_the_bundled_models(mrml):
    """The scenario Slicer's self-test runs (IVDSegmentationLib.scenarios), here on slicer-core nodes."""
    pytest.importorskip("onnxruntime")
    import unittest

    from IVDSegmentationLib import scenarios

    scenarios.scenarioCorrectPoints(unittest.TestCase())
