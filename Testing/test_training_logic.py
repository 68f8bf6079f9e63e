"""The training panel's logic on real MRML nodes: pairs from the scene, de-identified export, a real
two-epoch training in the worker with curves in a plot chart node, and registration of the package."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from conftest import exported_bytes, require_data, require_slicer_core

require_slicer_core()

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
    assert summarize(pairs, CLASS_MAP) == {"patients": 3, "series": 3, "seriesPerClass": {"intervertebral disc": 3}}
    assert summarize(pairs, {"lesion": ["no such segment"]})["seriesPerClass"] == {"lesion": 0}


def test_summary_reads_no_voxels(pairs, monkeypatch):
    """The summary runs on every GUI change: it must not copy segment arrays (each adds and removes nodes)."""
    import slicer
    from IVDSegmentationLib.training import summarize

    def refuse(*args, **kwargs):
        raise AssertionError("the summary read voxels")

    monkeypatch.setattr(slicer.util, "arrayFromSegmentBinaryLabelmap", refuse)
    monkeypatch.setattr(slicer.util, "arrayFromVolume", refuse)
    assert summarize(pairs, CLASS_MAP)["patients"] == 3


def test_export_runs_in_the_worker_and_is_deidentified(pairs, tmp_path, monkeypatch):
    import tempfile

    from IVDSegmentationLib.training import TrainingLogic

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the private pair files go
    (tmp_path / "tmp").mkdir()
    events = []
    info = TrainingLogic().exportDataset(pairs, CLASS_MAP, tmp_path / "ds", sizes=(64,), valFraction=0.34,
                                         progressCallback=events.append, timeout=300)
    assert len(info.cases) == 3 and info.classes == ["background", "intervertebral disc"]
    assert len({m["patient"] for m in info.cases.values()}) == 3
    assert [e["done"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    blob = exported_bytes(tmp_path / "ds")
    for secret in ["doe^janeway", "janeway", "secret-4471", "case11", "20230905"]:
        assert secret.encode() not in blob, secret
    assert list((tmp_path / "tmp").iterdir()) == []  # the pair files are gone
    # Every voxel of every disc level became the one class (native copies: the volumes' sagittal slices).
    import numpy as np
    from ivdseg.data.dataset import load_npz

    labels = sum(int((load_npz(tmp_path / "ds" / "cases" / f"{c}.npz")["label"] == 1).sum()) for c in info.cases)
    assert labels == sum(int((_labels(name) > 0).sum()) for name in ("case11", "case20", "case42"))
    with pytest.raises(RuntimeError, match="already exists"):
        TrainingLogic().exportDataset(pairs, CLASS_MAP, tmp_path / "ds", sizes=(64,), timeout=300)
    assert np is not None


def _labels(name):
    from ivdseg.io.volumes import read_volume

    return read_volume(require_data("ivd_lumbar_t2/nifti") / f"{name}_ivd_labels.nii.gz").array


def test_same_seed_same_split_whatever_the_session(pairs, tmp_path):
    """The Slicer side hashes patients with a fresh key each export; the split must not depend on it."""
    import json

    from IVDSegmentationLib.training import TrainingLogic

    splits = []
    for n in range(2):
        TrainingLogic().exportDataset(pairs, CLASS_MAP, tmp_path / f"ds{n}", sizes=(64,), valFraction=0.34, seed=3,
                                      timeout=300)
        meta = json.loads((tmp_path / f"ds{n}" / "dataset.json").read_text())
        split = json.loads((tmp_path / f"ds{n}" / "splits.json").read_text())
        # name each validation patient by its series' slice count (the pseudonyms differ between exports)
        splits.append(sorted(m["n_slices"] * 1000 + m["labelled_slices"] for m in meta["cases"].values()
                             if m["patient"] in split["val"]))
    assert splits[0] == splits[1] and len(splits[0]) == 1


def test_bad_exports(pairs, mrml, tmp_path):
    import slicer
    from IVDSegmentationLib.training import CasePair, TrainingLogic

    logic = TrainingLogic()
    with pytest.raises(ValueError, match="No \\(volume, segmentation\\) pairs"):
        logic.startExport([], CLASS_MAP, tmp_path / "a")
    with pytest.raises(ValueError, match="between 0 and 1"):
        logic.startExport(pairs, CLASS_MAP, tmp_path / "a", valFraction=1.5)
    with pytest.raises(RuntimeError, match="no voxel in any case"):
        logic.exportDataset(pairs, {"intervertebral disc": ["no such segment"]}, tmp_path / "b", sizes=(64,),
                            timeout=300)
    # a segmentation drawn on another grid than the volume it is paired with
    cropped = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cropped")
    slicer.util.updateVolumeFromArray(cropped, np.zeros((10, 12, 14), np.int16))
    with pytest.raises(ValueError, match="another grid"):
        logic.startExport([CasePair(cropped, pairs[0].segmentationNode)], CLASS_MAP, tmp_path / "c", sizes=(64,))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cancelled_export_leaves_the_folder_as_it_was(pairs, tmp_path):
    from IVDSegmentationLib.training import TrainingLogic

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text("{}")  # an earlier dataset the user agreed to replace
    logic = TrainingLogic()
    job = logic.startExport(pairs, CLASS_MAP, tmp_path / "ds", sizes=(64, 128, 192, 256), overwrite=True)
    while not job.poll() and not job.finished:  # the worker is at work
        time.sleep(0.02)
    job.cancel()
    while not job.finished:
        time.sleep(0.02)
    with pytest.raises(RuntimeError, match="Export cancelled"):
        logic.finishExport(job)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["dataset.json"]
    assert not Path(job.tmpdir).exists()


@pytest.mark.slow
def test_train_two_epochs_with_curves_and_register(pairs, tmp_path, monkeypatch):
    from IVDSegmentationLib.logic import SegmentationLogic
    from IVDSegmentationLib.training import TrainingLogic

    monkeypatch.setenv("IVDSEG_USER_MODELS", str(tmp_path / "models"))
    logic = TrainingLogic()
    logic.exportDataset(pairs, CLASS_MAP, tmp_path / "ds", sizes=(64,), valFraction=0.34, timeout=300)
    job = logic.startTraining(tmp_path / "ds", tmp_path / "run", size=64, epochs=2, batchSize=8,
                              name="scene-model", extraArgs=["--depth", "3", "--base-filters", "8"])
    assert job.wait(timeout=600) == 0, job.log[-2000:]
    table, chart = logic.updateCurves(job.events)
    assert table.GetNumberOfRows() == 2 and chart.GetNumberOfPlotSeriesNodes() == 2
    import slicer

    assert list(slicer.util.arrayFromTableColumn(table, "epoch")) == [1, 2]
    package = logic.packageOf(job, tmp_path / "run")
    info = SegmentationLogic().installModel(str(package))
    assert info.name == "scene-model" and info.validationDice is not None
    from IVDSegmentationLib.logic import cardSummary

    summary = cardSummary(info)
    assert ("test Dice" in summary) if info.testDice else ("chose the checkpoint; no test figure" in summary)
    assert "scene-model" in [m.name for m in SegmentationLogic().listModels()]
    # the run goes on for a third epoch, as the panel's "continue" does: the curves show the whole run
    from IVDSegmentationLib.training import earlierRun

    earlier = earlierRun(tmp_path / "run")
    assert earlier["resumable"] and earlier["epoch"] == 2
    assert [e["epoch"] for e in earlier["epochs"]] == [1, 2] and earlier["epochs"][0]["loss"] > 0
    job = logic.startTraining(tmp_path / "ds", tmp_path / "run", size=64, epochs=3, batchSize=8,
                              name="scene-model", extraArgs=["--depth", "3", "--base-filters", "8"], resume=True)
    assert job.wait(timeout=600) == 0, job.log[-2000:]
    assert [e["epoch"] for e in job.events if e.get("event") == "epoch"] == [3]  # epochs 1 and 2 are not redone
    table, _ = logic.updateCurves(earlier["epochs"] + job.events, table, chart)
    assert list(slicer.util.arrayFromTableColumn(table, "epoch")) == [1, 2, 3]
    job = logic.startTraining(tmp_path / "ds", tmp_path / "run", size=64, epochs=4, name="scene-model",
                              extraArgs=["--depth", "2", "--base-filters", "8"], resume=True)
    assert job.wait(timeout=600) != 0  # another network: one sentence, and the run is left as it was
    assert "Cannot resume" in job.errorMessage() and "--depth 3" in job.errorMessage()
    assert earlierRun(tmp_path / "run")["epoch"] == 3


def test_what_an_earlier_run_folder_holds(tmp_path):
    """A killed run logged an epoch its checkpoint does not hold (epoch 3 after the checkpoint of 2) and repeated one:
    the curves keep what the checkpoint holds, each epoch once; a folder without a training state cannot continue."""
    from IVDSegmentationLib.training import earlierRun

    run = tmp_path / "run"
    assert earlierRun(run) is None
    (run / "checkpoints").mkdir(parents=True)
    assert earlierRun(run) is None  # an empty checkpoints folder: nothing to continue or to delete
    (run / "checkpoints" / "best-e001.keras").write_bytes(b"x")
    (run / "log.csv").write_text("epoch,loss,val_dice\n0,0.9,0.1\n1,0.8,0.2\n1,0.7,0.3\n2,0.6,0.4\n3,0.5")
    earlier = earlierRun(run)
    assert not earlier["resumable"] and earlier["epoch"] is None
    assert [e["epoch"] for e in earlier["epochs"]] == [1, 2, 3]  # the row cut short by the kill is left out
    (run / "checkpoints" / "last.keras").write_bytes(b"x")
    (run / "checkpoints" / "state.json").write_text('{"epoch": 2, "best": [], "config": {}}')
    earlier = earlierRun(run)
    assert earlier["resumable"] and earlier["epoch"] == 2
    assert [(e["epoch"], e["val_dice"]) for e in earlier["epochs"]] == [(1, 0.1), (2, 0.3)]
    (run / "checkpoints" / "state.json").write_text("{not json")
    assert not earlierRun(run)["resumable"]
