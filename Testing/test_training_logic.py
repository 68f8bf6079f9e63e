"""The training panel's logic on real MRML nodes: pairs from the scene, de-identified export, a real
two-epoch training in the worker with curves in a plot chart node, and registration of the package."""

from __future__ import annotations


import numpy as np
import pytest
from conftest import exported_bytes, require_data

pytest.importorskip("slicer")

LEVELS = {1: "L5-S1", 2: "L4-L5", 3: "L3-L4", 4: "L2-L3", 5: "L1-L2"}
SECRETS = {"DICOM.PatientName": "Doe^Janeway", "DICOM.PatientID": "SECRET-4471"}


def _add_case(scene, name, patient_secrets):
    import slicer

    from ivdseg.io.volumes import read_volume

    root = require_data("ivd_lumbar_t2/nifti")
    image = read_volume(root / f"{name}_T2w.nii.gz")
    labels = read_volume(root / f"{name}_ivd_labels.nii.gz").array
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"Doe^Janeway {name}")
    slicer.util.updateVolumeFromArray(volume, image.array)
    volume.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(image.ijk_to_ras))
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), f"Doe^Janeway {name}")
    for key, value in patient_secrets.items():
        sh.SetItemAttribute(patient, key, f"{value}-{name}")
    study = sh.CreateStudyItem(patient, "MR lumbar 20230905")
    sh.CreateItem(study, volume)
    seg = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{name} discs")
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    for value, level in LEVELS.items():
        sid = seg.GetSegmentation().AddEmptySegment(level, level)
        slicer.util.updateSegmentBinaryLabelmapFromArray((labels == value).astype(np.uint8), seg, sid, volume)
    return volume, seg


@pytest.fixture
def pairs(mrml):
    from IVDSegmentationLib.training import casePairsFromScene

    for name in ("case11", "case20", "case42"):
        _add_case(mrml, name, SECRETS)
    found = casePairsFromScene()
    assert len(found) == 3
    return found


CLASS_MAP = {"intervertebral disc": list(LEVELS.values())}



def test_summary_and_segment_names(pairs):
    from IVDSegmentationLib.training import segmentNames, summarize

    assert segmentNames(pairs) == sorted(LEVELS.values())
    s = summarize(pairs, CLASS_MAP, list(CLASS_MAP))
    assert s["patients"] == 3 and s["series"] == 3
    assert 0 < s["labelledSlices"] < 3 * 67 and s["slicesPerClass"]["intervertebral disc"] == s["labelledSlices"]


def test_export_is_deidentified_and_refuses_twice(pairs, tmp_path):
    from IVDSegmentationLib.training import TrainingLogic

    info = TrainingLogic().exportDataset(pairs, CLASS_MAP, tmp_path / "ds", sizes=(64,), valFraction=0.34)
    assert len(info.cases) == 3 and info.classes == ["background", "intervertebral disc"]
    blob = exported_bytes(tmp_path / "ds")
    for secret in ["doe^janeway", "janeway", "secret-4471", "case11", "20230905"]:
        assert secret.encode() not in blob, secret
    with pytest.raises(ValueError, match="already exists"):
        TrainingLogic().exportDataset(pairs, CLASS_MAP, tmp_path / "ds", sizes=(64,))


def test_bad_exports(pairs, mrml, tmp_path):
    from IVDSegmentationLib.training import CasePair, TrainingLogic

    logic = TrainingLogic()
    with pytest.raises(ValueError, match="No \\(volume, segmentation\\) pairs"):
        logic.exportDataset([], CLASS_MAP, tmp_path / "a")
    with pytest.raises(ValueError, match="no voxel in any case"):
        logic.exportDataset(pairs, {"intervertebral disc": ["no such segment"]}, tmp_path / "b", sizes=(64,))
    # a segmentation drawn on another grid than the volume it is paired with
    other = pairs[1].volumeNode
    cropped = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cropped")
    import slicer

    slicer.util.updateVolumeFromArray(cropped, np.zeros((10, 12, 14), np.int16))
    with pytest.raises(ValueError, match="another grid"):
        logic.exportDataset([CasePair(cropped, pairs[0].segmentationNode)], CLASS_MAP, tmp_path / "c", sizes=(64,))
    cancelled = []
    with pytest.raises(Exception):
        logic.exportDataset(pairs, CLASS_MAP, tmp_path / "d", sizes=(64,),
                            cancelRequested=lambda: cancelled.append(1) or True)
    assert not (tmp_path / "d").exists() and [p.name for p in tmp_path.iterdir()] == []
    assert other is not None


@pytest.mark.slow
def test_train_two_epochs_with_curves_and_register(pairs, tmp_path, monkeypatch):
    from IVDSegmentationLib.logic import SegmentationLogic
    from IVDSegmentationLib.training import TrainingLogic

    monkeypatch.setenv("IVDSEG_USER_MODELS", str(tmp_path / "models"))
    logic = TrainingLogic()
    logic.exportDataset(pairs, CLASS_MAP, tmp_path / "ds", sizes=(64,), valFraction=0.34)
    job = logic.startTraining(tmp_path / "ds", tmp_path / "run", size=64, epochs=2, batchSize=8,
                              name="scene-model", extraArgs=["--depth", "3", "--base-filters", "8"])
    table = chart = None
    while not job.finished:
        job.wait(timeout=600)
    table, chart = logic.updateCurves(job.events, table, chart)
    assert job.returncode == 0, job.log[-2000:]
    assert table.GetNumberOfRows() == 2 and chart.GetNumberOfPlotSeriesNodes() == 2
    import slicer

    assert list(slicer.util.arrayFromTableColumn(table, "epoch")) == [1, 2]
    package = logic.packageOf(job, tmp_path / "run")
    info = SegmentationLogic().installModel(str(package))
    assert info.name == "scene-model" and info.validationDice is not None
    assert "scene-model" in [m.name for m in SegmentationLogic().listModels()]
