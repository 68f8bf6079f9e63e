"""Interactive correction at MRML level (slicer-core markups nodes): when the user ends a drag, the points the user
did not place follow the model, the one the user moved stays exactly where it was put, and undo restores all."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_slicer_core

LEVELS = ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
START = {label: (0.0, 10.0, 100.0 - 30.0 * n) for n, label in enumerate(LEVELS)}


def _rigid_model(calls):
    """A stand-in keypoint model: the spine is START shifted by the mean offset of the fixed points."""
    def predict(fixed):
        calls.append(dict(fixed))
        shift = np.mean([np.subtract(p, START[label]) for label, p in fixed.items()], axis=0) if fixed else 0.0
        return {label: tuple(np.add(p, shift)) for label, p in START.items()}
    return predict


def _points_node(scene):
    slicer = require_slicer_core()
    import vtk

    node = slicer.vtkMRMLMarkupsFiducialNode()
    scene.AddNode(node)
    for label in LEVELS:
        node.AddControlPoint(vtk.vtkVector3d(*START[label]), label)
    return node


def _positions(node):
    out = []
    for n in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPosition(n, p)
        out.append(p)
    return np.array(out)


def test_moving_one_point_moves_the_others_and_keeps_the_moved_one_exactly(mrml):
    slicer = require_slicer_core()
    from IVDSegmentationLib.pointcorrection import PointCorrection

    node, calls = _points_node(mrml), []
    correction = PointCorrection(node, _rigid_model(calls))
    correction.start()
    node.SetNthControlPointPosition(3, 0.0, 14.0, 5.5)  # the user drags L4-L5 4 mm forward, 4.5 mm down
    node.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    after = _positions(node)
    assert calls == [{"L4-L5": (0.0, 14.0, 5.5)}]
    assert after[3].tolist() == [0.0, 14.0, 5.5] and node.GetNthControlPointLocked(3)
    expected = np.array([START[label] for label in LEVELS]) + [0.0, 4.0, -4.5]
    np.testing.assert_allclose(np.delete(after, 3, axis=0), np.delete(expected, 3, axis=0))
    assert not any(node.GetNthControlPointLocked(n) for n in (0, 1, 2, 4))

    node.SetNthControlPointPosition(0, 1.0, 15.0, 95.0)  # a second fix: both placed points become hints
    node.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    assert set(calls[-1]) == {"L1-L2", "L4-L5"}
    assert _positions(node)[0].tolist() == [1.0, 15.0, 95.0] and _positions(node)[3].tolist() == [0.0, 14.0, 5.5]

    assert correction.undo() and np.allclose(_positions(node), after)
    assert node.GetNthControlPointLocked(3) and not node.GetNthControlPointLocked(0)
    assert correction.undo() and np.allclose(_positions(node), [START[label] for label in LEVELS])
    assert not any(node.GetNthControlPointLocked(n) for n in range(5)) and not correction.undo()
    node.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)  # an event without a move: no run
    assert len(calls) == 2
    correction.stop()
    node.SetNthControlPointPosition(2, 9.0, 9.0, 9.0)
    node.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    assert len(calls) == 2


def test_a_failing_model_leaves_the_points_as_the_user_left_them(mrml):
    slicer = require_slicer_core()
    from IVDSegmentationLib.pointcorrection import PointCorrection

    def broken(fixed):
        raise ValueError("The keypoint worker has ended; start the correction again.")

    node = _points_node(mrml)
    correction = PointCorrection(node, broken)
    node.SetNthControlPointPosition(1, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="worker has ended"):
        correction.onPointEndInteraction(node, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    assert _positions(node)[1].tolist() == [0.0, 0.0, 0.0] and not correction.undo()


def test_segment_names_follow_the_corrected_points(mrml):
    slicer = require_slicer_core()
    from ivdseg.models.terminology import ANATOMICAL_STRUCTURE, TYPES, terminology_entry
    from IVDSegmentationLib.pointcorrection import renameSegmentsByPoints

    segmentationNode = slicer.vtkMRMLSegmentationNode()
    mrml.AddNode(segmentationNode)
    segmentationNode.CreateDefaultDisplayNodes()
    import vtk

    def box(centre, name):
        source = vtk.vtkCubeSource()
        source.SetCenter(*centre)
        source.SetXLength(4), source.SetYLength(4), source.SetZLength(4)
        source.Update()
        return segmentationNode.AddSegmentFromClosedSurfaceRepresentation(source.GetOutput(), name)

    for n, label in enumerate(LEVELS[:4]):  # one small box per disc, numbered; the L5-S1 disc was not found
        box(START[label], f"disc {n}")
    # a spine model's vertebra segment between L4-L5 and L5-S1, the nearest segment to the L5-S1 point; and a disc
    # whose name the user changed, known by its terminology
    vertebra = box(np.add(START["L5-S1"], (0.0, 0.0, 10.0)), "vertebra")
    segmentation = segmentationNode.GetSegmentation()
    segmentation.GetSegment(vertebra).SetTag("TerminologyEntry", terminology_entry(
        {"category": list(ANATOMICAL_STRUCTURE), "type": list(TYPES["vertebra"])}))
    segmentation.GetNthSegment(3).SetName("my segment")
    segmentation.GetNthSegment(3).SetTag("TerminologyEntry", terminology_entry(
        {"category": list(ANATOMICAL_STRUCTURE), "type": list(TYPES["intervertebral disc"])}))
    named = renameSegmentsByPoints(segmentationNode, _points_node(mrml))
    names = [segmentation.GetNthSegment(n).GetName() for n in range(5)]
    assert names == [f"{label} intervertebral disc" for label in LEVELS[:4]] + ["vertebra"]  # not "L5-S1 ..."
    assert len(named) == 4 and vertebra not in named


def test_the_keypoint_worker_keeps_the_model_loaded_and_answers_each_correction(mrml, tmp_path):
    pytest.importorskip("onnxruntime")
    from test_keypoint_commands import _package

    from IVDSegmentationLib.pointcorrection import KeypointServer

    package = _package(tmp_path / "model", "image")
    image = tmp_path / "x.png"
    cv2.imwrite(str(image), (np.random.default_rng(0).random((200, 80)) * 255).astype(np.uint8))
    server = KeypointServer(image, package)
    try:
        assert server.labels == ["a", "b", "c", "d"]
        for fix in ((-10.0, -120.0, 0.0), (-30.0, -20.0, 0.0)):
            answer = server({"b": fix})
            assert set(answer) == {"a", "b", "c", "d"} and answer["b"] == pytest.approx(fix)
        with pytest.raises(ValueError, match="no keypoint 'elbow'"):
            server({"elbow": (0.0, 0.0, 0.0)})
    finally:
        server.close()
    assert server.process.poll() is not None


def test_the_correction_mode_runs_the_keypoint_model_the_card_names_and_cleans_up(mrml, tmp_path):
    """SegmentationLogic.startPointCorrection end to end: a worker with a (small, untrained) keypoint package on the
    volume; a drag leaves the dragged point exactly and moves the rest onto the mid-sagittal slice's predictions;
    undo restores; stopping ends the worker and removes its temporary volume."""
    pytest.importorskip("onnxruntime")
    slicer = require_slicer_core()
    import os

    import vtk
    from test_keypoint_commands import NAMES, _package

    from IVDSegmentationLib.logic import SegmentationLogic

    keypoints = _package(tmp_path / "kp", "sagittal")
    segmentationModel = tmp_path / "seg"
    segmentationModel.mkdir()
    card = json.loads(_bundled_card())
    (segmentationModel / "model.json").write_text(json.dumps({**card, "keypoint_model": str(keypoints)}))
    volume = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(volume, (np.random.default_rng(0).random((9, 96, 48)) * 100).astype(np.int16))
    points = slicer.vtkMRMLMarkupsFiducialNode()
    mrml.AddNode(points)
    for n, label in enumerate(NAMES):
        points.AddControlPoint(vtk.vtkVector3d(4.0, 10.0 + n, 20.0 + 10 * n), label)
    logic, seen = SegmentationLogic(), []
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.json").write_text(json.dumps({k: v for k, v in card.items() if k != "keypoint_model"}))
    with pytest.raises(ValueError, match="names no keypoint model"):
        logic.startPointCorrection(volume, points, None, str(plain))
    correction = logic.startPointCorrection(volume, points, None, str(segmentationModel),
                                            onCorrected=lambda moved, s: seen.append(moved))
    server, tmpdir, _ = logic._correctionResources
    before = _positions(points)
    points.SetNthControlPointPosition(1, 4.0, 30.0, 40.0)
    points.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    after = _positions(points)
    assert seen == [["b"]] and after[1].tolist() == [4.0, 30.0, 40.0] and points.GetNthControlPointLocked(1)
    assert not np.allclose(np.delete(after, 1, axis=0), np.delete(before, 1, axis=0))  # the model moved the rest
    assert correction.lastSeconds is not None
    assert logic.undoPointCorrection() and np.allclose(_positions(points), before)
    logic.stopPointCorrection()
    assert server.process.poll() is not None and not os.path.exists(tmpdir)
    points.SetNthControlPointPosition(0, 0.0, 0.0, 0.0)
    points.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    assert len(seen) == 1  # no longer observed


def _bundled_path():
    from ivdseg.models.package import resolve_model

    return resolve_model()


def _bundled_card() -> str:
    return (_bundled_path() / "model.json").read_text()


def test_keypoint_packages_are_not_offered_as_segmentation_models(mrml, tmp_path, monkeypatch):
    from test_keypoint_commands import _package

    from IVDSegmentationLib.logic import SegmentationLogic

    monkeypatch.setenv("IVDSEG_USER_MODELS", str(tmp_path / "user"))
    _package(tmp_path / "user" / "tiny-1", "sagittal")
    models = SegmentationLogic().listModels()
    assert models and all(m.name != "tiny-sagittal" for m in models)
    disc = next(m for m in models if m.name == "ivd-disc-2d")
    assert disc.correctable == bool(json.loads((Path(disc.path) / "model.json").read_text()).get("keypoint_model"))


def test_numbered_discs_cannot_be_corrected_and_unknown_labels_are_left_alone(mrml, tmp_path):
    slicer = require_slicer_core()
    import vtk
    from test_keypoint_commands import _package

    from IVDSegmentationLib.logic import SegmentationLogic
    from IVDSegmentationLib.pointcorrection import PointCorrection

    segmentationModel = tmp_path / "seg"
    segmentationModel.mkdir()
    card = json.loads(_bundled_card())
    (segmentationModel / "model.json").write_text(json.dumps({**card, "keypoint_model": str(
        _package(tmp_path / "kp", "sagittal"))}))
    volume = mrml.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    slicer.util.updateVolumeFromArray(volume, np.zeros((5, 64, 32), np.int16))
    points = slicer.vtkMRMLMarkupsFiducialNode()
    mrml.AddNode(points)
    for n in range(3):
        points.AddControlPoint(vtk.vtkVector3d(0.0, 0.0, 10.0 * n), f"disc {n + 1}")
    with pytest.raises(ValueError, match="numbered because the lumbosacral disc was not found"):
        SegmentationLogic().startPointCorrection(volume, points, None, str(segmentationModel))

    node, calls = _points_node(mrml), []
    node.AddControlPoint(vtk.vtkVector3d(5.0, 5.0, 5.0), "T12-L1")  # a level the model does not know
    correction = PointCorrection(node, _rigid_model(calls), known=LEVELS)
    node.SetNthControlPointPosition(5, 6.0, 6.0, 6.0)
    node.SetNthControlPointPosition(0, 0.0, 12.0, 100.0)
    correction.onPointEndInteraction()
    assert calls == [{"L1-L2": (0.0, 12.0, 100.0)}] and _positions(node)[5].tolist() == [6.0, 6.0, 6.0]
