"""Self-test scenarios, shared by Slicer's test harness (IVDSegmentationTest) and pytest (slicer-core).

Each scenario takes a ``unittest.TestCase``-like object for its asserts, builds its data in code
(a synthetic sagittal spine with known discs), runs the real worker with a real model package, and
checks the scene. ``slicer.mrmlScene`` must be set (the application sets it; pytest's fixture too).
"""

from __future__ import annotations

import time

import numpy as np
import slicer
import vtk

from ivdseg.models.package import read_card, resolve_model
from ivdseg.data.phantom import synthetic_spine_volume

from .logic import SegmentationLogic
from .nodes import INPUT_ATTRIBUTE, MODEL_ATTRIBUTE, ijkToRasArray


def addPhantomVolume(name="Synthetic spine"):
    """A scalar volume node with the synthetic spine; returns (node, truth (K, J, I) uint8)."""
    image, truth = synthetic_spine_volume()
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, image.array.astype(np.int16))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(image.ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node, truth.array


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def scenarioSegmentSyntheticVolume(testCase, modelPath=None, minDice=0.5):
    """The bundled model on the synthetic spine: named segments with terminology, right geometry, discs found."""
    modelPath = str(modelPath or resolve_model())
    card = read_card(modelPath)
    volumeNode, truth = addPhantomVolume()
    events = []
    segNode = SegmentationLogic().segment(volumeNode, modelPath, device="cpu", batchSize=8,
                                          progressCallback=events.append, timeout=600)
    testCase.assertTrue(any(e["event"] == "progress" for e in events))
    segmentation = segNode.GetSegmentation()
    testCase.assertEqual(segmentation.GetNumberOfSegments(), len(card["classes"]))
    for cls in card["classes"]:
        segment = segmentation.GetSegment(f"Segment_{cls['value']}")
        testCase.assertIsNotNone(segment)
        testCase.assertEqual(segment.GetName(), cls["name"])
        np.testing.assert_allclose(segment.GetColor(), cls["color"], atol=1e-6)
        if cls.get("terminology"):
            testCase.assertIn(cls["terminology"]["type"][1], segment.GetTerminology())
    disc = segmentation.GetSegment("Segment_1")
    value = vtk.reference("")
    disc.GetTag("DICOM.SegmentAlgorithmType", value)
    testCase.assertEqual(str(value), "AUTOMATIC")
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "Segment_1", volumeNode)
    testCase.assertEqual(mask.shape, truth.shape)
    testCase.assertGreater(_dice(mask, truth), minDice)
    # the segmentation's reference geometry is the volume's
    geometry = segNode.GetNodeReference("referenceImageGeometryRef")
    testCase.assertEqual(geometry.GetID() if geometry else volumeNode.GetID(), volumeNode.GetID())
    return segNode


def scenarioSegmentationReplacesOwnResult(testCase, modelPath=None):
    """A second run replaces the first result of the same model; another model's result is left alone."""
    modelPath = str(modelPath or resolve_model())
    card = read_card(modelPath)
    volumeNode, _ = addPhantomVolume("Replace test")
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other model's result")
    other.SetAttribute(MODEL_ATTRIBUTE, "another-model")
    other.SetAttribute(INPUT_ATTRIBUTE, volumeNode.GetID())
    logic = SegmentationLogic()
    first = logic.segment(volumeNode, modelPath, device="cpu", timeout=600)
    count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    second = logic.segment(volumeNode, modelPath, device="cpu", timeout=600)
    testCase.assertEqual(first.GetID(), second.GetID())
    testCase.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), count)
    testCase.assertEqual(second.GetSegmentation().GetNumberOfSegments(), len(card["classes"]))
    testCase.assertIsNotNone(slicer.mrmlScene.GetNodeByID(other.GetID()))
    testCase.assertEqual(other.GetAttribute(MODEL_ATTRIBUTE), "another-model")


def scenarioCancelLeavesSceneUnchanged(testCase, modelPath=None):
    """Cancel ends the worker within a second and the scene is as it was before Apply."""
    modelPath = str(modelPath or resolve_model())
    volumeNode, _ = addPhantomVolume("Cancel test")
    before = slicer.mrmlScene.GetNumberOfNodes()
    logic = SegmentationLogic()
    job = logic.startSegmentation(volumeNode, modelPath, device="cpu")
    time.sleep(0.3)
    t0 = time.time()
    job.cancel()
    while not job.finished:
        time.sleep(0.01)
    testCase.assertLess(time.time() - t0, 1.0)
    with testCase.assertRaises(RuntimeError):
        logic.finishSegmentation(job)
    testCase.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)


def scenarioWorkerFailureIsReadable(testCase, brokenModelPath):
    """A model that does not load becomes one readable error; no node is added; the log is kept."""
    volumeNode, _ = addPhantomVolume("Failure test")
    before = slicer.mrmlScene.GetNumberOfNodes()
    with testCase.assertRaises(RuntimeError) as raised:
        SegmentationLogic().segment(volumeNode, str(brokenModelPath), device="cpu", timeout=300)
    message = str(raised.exception)
    testCase.assertNotIn("Traceback", message)
    testCase.assertEqual(len([line for line in message.splitlines() if line.strip()]), 1)
    testCase.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)


def scenarioVolumeGeometryIsKept(testCase):
    """The node -> worker file -> node path keeps the IJK-to-RAS matrix exactly."""
    from .nodes import volumeFromNode

    volumeNode, _ = addPhantomVolume("Geometry test")
    volume = volumeFromNode(volumeNode)
    np.testing.assert_allclose(volume.ijk_to_ras, ijkToRasArray(volumeNode))
    testCase.assertEqual(volume.array.shape, tuple(reversed(volumeNode.GetImageData().GetDimensions())))


def runAllScenarios(testCase, modelPath=None):
    scenarioVolumeGeometryIsKept(testCase)
    scenarioSegmentSyntheticVolume(testCase, modelPath)
    scenarioSegmentationReplacesOwnResult(testCase, modelPath)
    scenarioCancelLeavesSceneUnchanged(testCase, modelPath)
