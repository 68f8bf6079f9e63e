"""The Slicer logic on real MRML nodes (slicer-core): the same scenarios Slicer's self-test runs,
plus DICOM folder loading, model installation and worker failures."""

from __future__ import annotations

import json
import shutil
import unittest
from pathlib import Path

import numpy as np
import pytest
from conftest import require_data, require_slicer_core
from dicom_builders import SAGITTAL_IOP, _series

require_slicer_core()


@pytest.fixture
def case():
    return unittest.TestCase()


@pytest.fixture
def scenarios(mrml):
    from IVDSegmentationLib import scenarios

    return scenarios


@pytest.fixture
def bundled():
    from ivdseg.models.package import resolve_model

    return resolve_model()


def test_geometry_round_trip(scenarios, case):
    scenarios.scenarioVolumeGeometryRoundTrip(case)


def test_segmentation_from_a_labelmap(scenarios, case):
    scenarios.scenarioSegmentationFromLabelmap(case)


def test_second_result_replaces_only_its_own(scenarios, case):
    scenarios.scenarioSegmentationReplacesOwnResult(case)


def test_terminology_context_loads(scenarios, case, mrml):
    import slicer

    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    logic.SetMRMLScene(mrml)
    scenarios.scenarioTerminologyContextLoads(case, logic)


def test_training_pairs_and_curves(scenarios, case):
    scenarios.scenarioTrainingPairsAndCurves(case)


@pytest.mark.slow
def test_the_self_tests_training_scenario_exports_trains_continues_and_installs(scenarios, case):
    """Reload and Test runs this scenario in Slicer (a worker training, then continued from its checkpoint)."""
    scenarios.runTrainingScenario(case, timeout=600)


def test_bundled_model_segments_the_synthetic_spine(scenarios, case, bundled, mrml):
    node = scenarios.scenarioSegmentSyntheticVolume(case, bundled)
    import slicer

    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    assert shNode.GetItemByDataNode(node)


def test_disc_levels_give_segments_points_and_a_table_replaced_on_rerun(scenarios, case, bundled, mrml):
    scenarios.scenarioDiscLevels(case, bundled)


def test_the_spine_model_adds_vertebrae_canal_and_the_height_index_to_the_scene(scenarios, mrml):
    """The bundled spine model with levels on a real lumbar volume (case25, one of its test patients), through the
    worker as Apply runs it: a segment per disc named by level, then vertebra and spinal canal with their SNOMED CT
    codes, and a measurement table whose discs have a disc height index and a signal ratio against the canal."""
    import slicer

    from ivdseg.io.volumes import read_volume
    from ivdseg.models.package import resolve_model
    from ivdseg.models.terminology import TYPES
    from IVDSegmentationLib.logic import SegmentationLogic
    from IVDSegmentationLib.nodes import findResultNode

    image = read_volume(require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz"))
    volumeNode = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "case25")
    slicer.util.updateVolumeFromArray(volumeNode, image.array.astype(np.int16))
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(image.ijk_to_ras))
    segNode = SegmentationLogic().segment(volumeNode, str(resolve_model("ivd-spine-2d")), device="cpu", batchSize=8,
                                          timeout=600, levels=True)
    segmentation = segNode.GetSegmentation()
    segments = [segmentation.GetNthSegment(k) for k in range(segmentation.GetNumberOfSegments())]
    names = [segment.GetName() for segment in segments]
    assert names[-2:] == ["vertebra", "spinal canal"], names
    assert [name.split()[0] for name in names[:-2]][-5:] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    for segment, name in zip(segments[-2:], ["vertebra", "spinal canal"]):
        assert f"~SCT^{TYPES[name][1]}^" in scenarios._tag(segment, "TerminologyEntry")
    table = findResultNode(mrml, volumeNode, "ivd-spine-2d", "vtkMRMLTableNode", "disc measurements")
    assert table.GetNumberOfRows() == len(names) - 2
    columns = {name: table.GetTable().GetColumnByName(name) for name in ("level", "disc_height_index",
                                                                          "signal_reference")}
    lumbar = [k for k in range(table.GetNumberOfRows()) if columns["level"].GetValue(k).startswith("L")]
    assert len(lumbar) == 5
    assert all(0.2 < float(columns["disc_height_index"].GetValue(k)) < 0.55 for k in lumbar)
    assert all(columns["signal_reference"].GetValue(k) == "spinal canal" for k in lumbar)


def test_cancel_within_a_second_leaves_scene_unchanged(scenarios, case, bundled):
    scenarios.scenarioCancelLeavesSceneUnchanged(case, bundled)


def test_broken_model_is_one_readable_error(scenarios, case, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text(json.dumps({"name": "x"}))
    scenarios.scenarioWorkerFailureIsReadable(case, broken)


def test_segments_match_the_seg_nrrd_writer(mrml, tmp_path, scenarios):
    """The node the Slicer side builds and the .seg.nrrd the command line writes carry the same segments."""
    import slicer

    from ivdseg.io.geometry import Volume
    from ivdseg.io.segnrrd import write_seg_nrrd
    from IVDSegmentationLib.nodes import ijkToRasArray, segmentationFromLabelmap

    card = scenarios._blockCard()
    volumeNode, discs = scenarios.addBlockSpineVolume()
    ours = segmentationFromLabelmap(discs, volumeNode, card).GetSegmentation().GetSegment("Segment_1")
    path = write_seg_nrrd(Volume(discs, ijkToRasArray(volumeNode)), card["classes"], tmp_path / "d.seg.nrrd",
                          algorithm_name="block-test-model 0")
    node = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = mrml.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    theirs = node.GetSegmentation().GetSegment("Segment_1")
    assert (ours.GetName(), ours.GetTerminology()) == (theirs.GetName(), theirs.GetTerminology())
    for key in ("DICOM.SegmentAlgorithmType", "DICOM.SegmentAlgorithmName"):
        assert scenarios._tag(ours, key) == scenarios._tag(theirs, key)
    assert ours.GetColor() == pytest.approx(theirs.GetColor())
    assert slicer.util.arrayFromSegmentBinaryLabelmap(node, "Segment_1", volumeNode).sum() == discs.sum()


def test_dicom_folder_loads_under_its_study_and_result_follows(mrml, tmp_path, bundled):
    import slicer
    from IVDSegmentationLib.logic import SegmentationLogic
    from IVDSegmentationLib.nodes import ijkToRasArray
    from ivdseg.io.dicom import read_series

    _series(tmp_path / "dcm", iop=SAGITTAL_IOP)
    node = SegmentationLogic.loadDicomFolder(str(tmp_path / "dcm"))
    np.testing.assert_allclose(ijkToRasArray(node), read_series(tmp_path / "dcm").ijk_to_ras)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    study = shNode.GetItemParent(shNode.GetItemByDataNode(node))
    assert shNode.GetItemLevel(study) == "Study"
    seg = SegmentationLogic().segment(node, str(bundled), device="cpu", timeout=300)
    assert shNode.GetItemParent(shNode.GetItemByDataNode(seg)) == study


def test_dicom_patients_stay_apart_and_pair_by_patient(mrml, tmp_path):
    """Two DICOM series of two patients are two patients for the export; two series of one patient share one
    patient item (by PatientID, as Slicer's DICOM module keys it)."""
    import slicer
    from IVDSegmentationLib.logic import SegmentationLogic
    from IVDSegmentationLib.training import patientOf

    nodes = []
    for n, patient in enumerate(["PID-1", "PID-2", "PID-1"]):
        _series(tmp_path / f"dcm{n}", iop=SAGITTAL_IOP, PatientID=patient, series_uid=f"1.2.826.0.1.{n + 1}",
                StudyInstanceUID=f"1.2.826.0.2.{n + 1}", PatientName="Doe^Jane")
        nodes.append(SegmentationLogic.loadDicomFolder(str(tmp_path / f"dcm{n}")))
    identities = [patientOf(node) for node in nodes]
    assert identities[0] == identities[2] != identities[1]
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml)
    patients = {shNode.GetItemParent(shNode.GetItemParent(shNode.GetItemByDataNode(node))) for node in nodes}
    assert len(patients) == 2
    assert all(shNode.GetItemLevel(item) == "Patient" for item in patients)


def test_real_dicom_series_node_geometry_matches_tags(mrml):
    import pydicom
    from IVDSegmentationLib.logic import SegmentationLogic
    from IVDSegmentationLib.nodes import ijkToRasArray

    folder = require_data("dicom_mr_sagittal_series/In")
    node = SegmentationLogic.loadDicomFolder(str(folder))
    m = ijkToRasArray(node)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    iop = np.array(first.ImageOrientationPatient, float)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(m[:3, 0], iop[:3] * col_mm * lps_to_ras, atol=1e-4)
    np.testing.assert_allclose(m[:3, 1], iop[3:] * row_mm * lps_to_ras, atol=1e-4)
    positions = sorted(float(np.dot(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient,
                                    np.cross(iop[:3], iop[3:]))) for f in files)
    assert np.linalg.norm(m[:3, 2]) == pytest.approx(np.median(np.diff(positions)), rel=1e-3)
    assert node.GetImageData().GetDimensions()[2] == len(files)


def test_install_and_list_models(mrml, tmp_path, monkeypatch, bundled):
    from IVDSegmentationLib.logic import SegmentationLogic, cardSummary

    monkeypatch.setenv("IVDSEG_USER_MODELS", str(tmp_path / "user"))
    logic = SegmentationLogic()
    names = [m.name for m in logic.listModels()]
    assert "ivd-disc-2d" in names
    assert "ivd-lumbosacral-2d" not in names  # the levels anchor is run by the disc model, not chosen by the user
    assert "ivd-disc-centres-2d" not in names  # nor is the keypoint model of its Correct points mode
    archive = shutil.make_archive(str(tmp_path / "pkg"), "zip", bundled)
    info = logic.installModel(archive)
    assert not info.builtin and Path(info.path).parent == tmp_path / "user"
    assert len(logic.listModels()) == len(names) + 1
    summary = cardSummary(info)  # the figures that chose nothing, not the validation patients'
    assert summary.startswith("intervertebral disc; input 256 px; test Dice 0.880 (8 patients who chose nothing); "
                              "on a source left out of training 0.749") and "validation" not in summary
    spine = next(m for m in logic.listModels() if m.name == "ivd-spine-2d")
    assert cardSummary(spine).endswith("on a source left out of training 0.749 / 0.713 / n/a")  # the canal: untrained
    with pytest.raises(ValueError, match="already installed"):
        logic.installModel(archive)
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="model.json is missing"):
        logic.installModel(str(tmp_path / "junk"))
    assert [p.name for p in (tmp_path / "user").iterdir()] == [Path(info.path).name]


def test_missing_packages_are_named_as_pip_requirements(monkeypatch):
    import importlib.util

    from IVDSegmentationLib import dependencies

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "onnxruntime" else real(name))
    assert dependencies.missingInferencePackages() == ["onnxruntime>=1.18"]
    assert "tensorflow>=2.20" not in dependencies.missingInferencePackages()


def test_a_card_naming_a_path_is_not_installed(mrml, tmp_path, monkeypatch, bundled):
    from IVDSegmentationLib.logic import SegmentationLogic

    monkeypatch.setenv("IVDSEG_USER_MODELS", str(tmp_path / "user"))
    for name, version in (("../../escape", "1"), ("ok", "../../x"), ("..", "1"), ("a/b", "1")):
        package = tmp_path / f"pkg-{abs(hash((name, version)))}"
        shutil.copytree(bundled, package)
        card = json.loads((package / "model.json").read_text())
        (package / "model.json").write_text(json.dumps({**card, "name": name, "version": version}))
        with pytest.raises(ValueError, match="letters, digits"):
            SegmentationLogic().installModel(str(package))
    assert not (tmp_path / "user").exists() or list((tmp_path / "user").iterdir()) == []
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("pkg-")] in ([], ["user"])


def test_colour_volume_is_refused(mrml):
    import slicer
    from IVDSegmentationLib.logic import SegmentationLogic

    node = mrml.AddNewNodeByClass("vtkMRMLVectorVolumeNode")
    slicer.util.updateVolumeFromArray(node, np.zeros((2, 3, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="several components"):
        SegmentationLogic().startSegmentation(node, "x")


def test_overlapping_classes_become_overlapping_segments(mrml, tmp_path, scenarios, case):
    """A model whose classes overlap: the worker's bits become one segment per class sharing voxels (the self-test's
    scenario), as the layered .seg.nrrd of the command line holds them when Slicer reads it."""
    import slicer

    from ivdseg.data.labels import bits_from_masks
    from ivdseg.io.geometry import Volume
    from ivdseg.io.segnrrd import write_seg_nrrd
    from IVDSegmentationLib.nodes import ijkToRasArray

    node, masks = scenarios.scenarioOverlappingSegments(case)
    from IVDSegmentationLib.nodes import INPUT_ATTRIBUTE

    volumeNode = slicer.mrmlScene.GetNodeByID(node.GetAttribute(INPUT_ATTRIBUTE))
    classes = [{"value": 1, "name": "stomach", "color": [1.0, 0.0, 0.0]},
               {"value": 2, "name": "large bowel", "color": [0.0, 0.8, 0.0]}]
    path = write_seg_nrrd(Volume(bits_from_masks(masks), ijkToRasArray(volumeNode)), classes, tmp_path / "o.seg.nrrd",
                          overlapping=True)
    read = mrml.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = mrml.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(read) == 1
    for k in range(2):
        theirs = slicer.util.arrayFromSegmentBinaryLabelmap(read, read.GetSegmentation().GetNthSegmentID(k),
                                                             volumeNode)
        assert np.array_equal(theirs > 0, masks[..., k])
