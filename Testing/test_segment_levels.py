"""`ivdseg segment --levels / --points / --table` with the bundled model on a real lumbar volume: one label per
disc, the disc centres as a Slicer point list, the measurement table, and the refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import require_data

from ivdseg import cli
from ivdseg.io.markups import read_points
from ivdseg.io.volumes import read_volume

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def case25(tmp_path_factory):
    image = require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz")
    out = tmp_path_factory.mktemp("levels")
    code = cli.main([str(a) for a in ["segment", image, "-o", out / "discs.nii.gz", "--points", out / "discs.mrk.json",
                                      "--table", out / "discs.csv", "--backend", "onnx", "--progress", "none"]])
    assert code == 0
    return image, out


TRUTH_LEVELS = {5: "L1-L2", 4: "L2-L3", 3: "L3-L4", 2: "L4-L5", 1: "L5-S1"}  # ivd_lumbar_t2's label values


def test_each_disc_is_its_own_label_named_by_its_level(case25):
    """case25 is a test patient of both bundled models (it chose nothing): every disc it labels gets its level."""
    image, out = case25
    labels = read_volume(out / "discs.nii.gz")
    truth = read_volume(require_data("ivd_lumbar_t2/nifti/case25_ivd_labels.nii.gz"))
    sidecar = json.loads((out / "discs.nii.gz.json").read_text())
    n = sidecar["levels"]["discs"]
    assert set(np.unique(labels.array)) == set(range(n + 1))
    assert not sidecar["levels"]["uncertain"] and "ivd-lumbosacral-2d" in sidecar["levels"]["anchor"]
    assert all(c["terminology"]["type"][1] == "360499006" for c in sidecar["labels"])
    named = {}
    for c in sidecar["labels"]:
        hits = np.bincount(truth.array[labels.array == c["value"]].astype(int), minlength=6)[1:]
        if hits.sum() > 0.5 * (labels.array == c["value"]).sum():
            named[TRUTH_LEVELS[int(np.argmax(hits)) + 1]] = (c["level"], c["name"])
    assert named == {level: (level, f"{level} intervertebral disc") for level in TRUTH_LEVELS.values()}


def test_the_points_and_the_table_have_one_entry_per_disc(case25):
    _, out = case25
    sidecar = json.loads((out / "discs.nii.gz.json").read_text())
    points = read_points(out / "discs.mrk.json")
    assert [p.label for p in points] == [c["level"] for c in sidecar["labels"]][:len(points)]
    assert [p.label for p in points][-5:] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    heights = [p.ras[2] for p in points]
    assert heights == sorted(heights, reverse=True)
    with open(out / "discs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(points)
    lumbar = [r for r in rows if float(r["volume_ml"]) > 2]
    assert len(lumbar) >= 5
    for r in lumbar:  # adult lumbar discs: a few mL, 25-50 mm deep, a few mm to 15 mm high
        assert 25 < float(r["ap_depth_mm"]) < 55 and 3 < float(r["middle_height_mm"]) < 16
        assert 0 <= float(r["uncertainty"]) <= 1 and r["review"] in ("True", "False")


def test_levels_need_a_model_that_names_them_and_outputs_need_their_endings(tmp_path, capsys):
    image = require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz")
    assert cli.main([str(a) for a in ["segment", image, "-o", tmp_path / "x.nii.gz", "--points", tmp_path / "p.json",
                                      "--progress", "none"]]) == 2
    assert "--points" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()
    import shutil

    from ivdseg.models.package import resolve_model, update_card

    shutil.copytree(resolve_model(), tmp_path / "no-levels")
    card = json.loads((tmp_path / "no-levels" / "model.json").read_text())
    card.pop("instances")
    (tmp_path / "no-levels" / "model.json").write_text(json.dumps(card))
    update_card(tmp_path / "no-levels", {})
    assert cli.main([str(a) for a in ["segment", image, "-o", tmp_path / "x.nii.gz", "--levels", "--model",
                                      tmp_path / "no-levels", "--progress", "none"]]) == 2
    err = capsys.readouterr().err
    assert "names no instances" in err and err.count("\n") == 1
    assert not (tmp_path / "x.nii.gz").exists()


def test_a_seg_nrrd_has_one_segment_per_disc(tmp_path):
    import slicerio

    image = require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz")
    assert cli.main([str(a) for a in ["segment", image, "-o", tmp_path / "discs.seg.nrrd", "--levels",
                                      "--backend", "onnx", "--progress", "none"]]) == 0
    segmentation = slicerio.read_segmentation(str(tmp_path / "discs.seg.nrrd"))
    names = [s["name"] for s in segmentation["segments"]]
    assert len(names) >= 5 and names[-5:] == [f"{level} intervertebral disc" for level in
                                              ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")]
    assert all(s["terminology"]["type"] == ["SCT", "360499006", "Intervertebral disc"]
               for s in segmentation["segments"])
    assert all(s["tags"]["DICOM.SegmentAlgorithmType"] == "AUTOMATIC" for s in segmentation["segments"])


def test_a_volume_without_discs_says_so_and_writes_every_output(tmp_path, capsys):
    from ivdseg.io.geometry import Volume, sagittal_mapping
    from ivdseg.io.volumes import write_volume

    image = read_volume(require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz"))
    few = [slice(None)] * 3
    few[sagittal_mapping(image).axes[0]] = slice(30, 34)  # four blank sagittal slices say it as well as 67
    empty = write_volume(Volume(np.zeros_like(image.array[tuple(few)]), image.ijk_to_ras), tmp_path / "empty.nii.gz")
    for output in ("x.nii.gz", "x.seg.nrrd"):
        assert cli.main([str(a) for a in ["segment", empty, "-o", tmp_path / output, "--points", tmp_path / "p.mrk.json",
                                          "--table", tmp_path / "t.csv", "--backend", "onnx", "--overwrite",
                                          "--progress", "none"]]) == 0
        err = capsys.readouterr().err
        assert err.count("No disc was found in this volume") == 1
    sidecar = json.loads((tmp_path / "x.nii.gz.json").read_text())
    assert sidecar["levels"]["discs"] == 0 and [c["name"] for c in sidecar["labels"]] == ["intervertebral disc"]
    assert read_points(tmp_path / "p.mrk.json") == []
    assert (tmp_path / "t.csv").read_text().count("\n") == 1  # the header only


def test_a_single_sagittal_slice_gets_its_levels(tmp_path):
    from ivdseg.io.geometry import Volume, sagittal_mapping
    from ivdseg.io.volumes import write_volume

    image = read_volume(require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz"))
    axis = sagittal_mapping(image).axes[0]
    middle = [slice(None)] * 3
    middle[axis] = slice(image.array.shape[axis] // 2, image.array.shape[axis] // 2 + 1)
    one = write_volume(Volume(image.array[tuple(middle)], image.ijk_to_ras), tmp_path / "one.nii.gz")
    assert cli.main([str(a) for a in ["segment", one, "-o", tmp_path / "one-discs.nii.gz", "--levels",
                                      "--backend", "onnx", "--progress", "none"]]) == 0
    sidecar = json.loads((tmp_path / "one-discs.nii.gz.json").read_text())
    assert [c["level"] for c in sidecar["labels"]][-5:] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]


def test_a_cervical_scan_has_no_lumbosacral_anchor_so_its_discs_are_numbered(tmp_path, capsys):
    """sct_cervical_t2 shows C1 to T1: the anchor (L5-S1 above the sacrum) is out of view, so no level is guessed."""
    image = require_data("sct_cervical_t2/t2/t2.nii.gz")
    assert cli.main([str(a) for a in ["segment", image, "-o", tmp_path / "c.nii.gz", "--levels", "--backend", "onnx",
                                      "--progress", "none"]]) == 0
    assert capsys.readouterr().err.count("finds no lumbosacral disc") == 1
    sidecar = json.loads((tmp_path / "c.nii.gz.json").read_text())
    assert sidecar["levels"]["uncertain"] and sidecar["levels"]["anchor"] is None
    assert all(c["level"] is None and c["name"].startswith("intervertebral disc ") for c in sidecar["labels"])


def test_no_tta_skips_the_augmentation_the_card_enables(tmp_path, monkeypatch):
    from ivdseg.inference import predict
    from ivdseg.models.package import read_card, resolve_model

    assert read_card(resolve_model())["tta"]["enabled"]
    passes = []
    real = predict.scaled_predict
    monkeypatch.setattr(predict, "scaled_predict", lambda fn, scales: passes.append(scales) or real(fn, scales))
    image = require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz")
    args = ["segment", image, "-o", tmp_path / "x.nii.gz", "--backend", "onnx", "--progress", "none", "--overwrite"]
    assert cli.main([str(a) for a in args + ["--no-tta"]]) == 0 and passes == []
    assert cli.main([str(a) for a in args]) == 0 and passes == [(0.9, 1.0, 1.1)]


def test_evaluate_levels_scores_the_bundled_models_against_per_level_labels(tmp_path, capsys):
    """Two ivd_lumbar_t2 volumes whose labels name every level: every disc named right, centres within 2 mm."""
    root = require_data("ivd_lumbar_t2")
    spec = {"classes": ["intervertebral disc", "lumbosacral disc"], "sources": [{
        "name": "ivd_lumbar_t2", "kind": "volumes", "root": str(root), "images": "nifti/case[12][15]_T2w.nii.gz",
        "labels": "nifti/{patient}_ivd_labels.nii.gz", "patient_pattern": r"^(case\d+)_",
        "classes": {"intervertebral disc": [2, 3, 4, 5], "lumbosacral disc": [1]}}]}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert cli.main([str(a) for a in ["export", tmp_path / "ds", "--spec", tmp_path / "spec.json", "--sizes", "64",
                                      "--val-fraction", "0.5", "--test-fraction", "0", "--progress", "none"]]) == 0
    assert cli.main([str(a) for a in ["evaluate-levels", tmp_path / "ds", "--split", "all", "--backend", "onnx",
                                      "--json", tmp_path / "levels.json"]]) == 0
    out = capsys.readouterr().out
    assert "ivd_lumbar_t2" in out and "100.0 %" in out
    result = json.loads((tmp_path / "levels.json").read_text())["overall"]
    assert result["cases"] == 2 and result["discs"] == 10 and result["level_accuracy"] == 1.0
    assert result["unit"] == "mm" and result["centre_error_median"] < 2.0
    capsys.readouterr()
    assert cli.main([str(a) for a in ["evaluate-levels", tmp_path / "ds", "--split", "test"]]) == 2
    assert "has no test patients" in capsys.readouterr().err
