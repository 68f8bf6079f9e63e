"""Self-test scenarios, shared by Slicer's test harness (IVDSegmentationTest) and pytest (slicer-core).

Each scenario takes a ``unittest.TestCase``-like object for its asserts, builds its data in code and checks the
scene. ``slicer.mrmlScene`` must be set (the application sets it; pytest's fixture too). Three groups:

* logic scenarios need nothing beyond Slicer (numpy-made data, no worker): they always run;
* inference scenarios run the real worker with the bundled model; they need the inference packages;
* the training scenario trains one epoch in the worker; it needs TensorFlow.

Scenarios that wait for a worker take ``idle``: what to do between polls (Slicer's test passes a short Qt event
loop, so the GUI stays responsive; pytest a short sleep). None of them sleeps on the GUI thread.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import slicer
import vtk

from ivdseg.models.package import read_card, resolve_model
from ivdseg.models.terminology import CONTEXT_NAME, TYPES

from . import dependencies, training
from .logic import SegmentationLogic
from .nodes import (INPUT_ATTRIBUTE, MODEL_ATTRIBUTE, arrayOnGrid, ijkToRasArray, readLabelArray,
                    segmentationFromLabelmap, writeVolumeNode)
from .terminology import ensureTerminologyContext, loadedContextNames, loadTerminologyContext

# The block spine's grid, written out by hand: i runs posterior 0.8 mm, j inferior 0.9 mm, k to the left 3 mm.
BLOCK_SPINE_IJK_TO_RAS = np.array([[0.0, 0.0, -3.0, 12.5],
                                   [-0.8, 0.0, 0.0, -31.0],
                                   [0.0, -0.9, 0.0, 47.25],
                                   [0.0, 0.0, 0.0, 1.0]])
BLOCK_SPINE_DISC_VOXELS = 3 * 4 * 6 * 16  # three discs of 4 rows x 16 columns on the 6 middle slices


def _sleep():
    time.sleep(0.02)


def blockSpine():
    """(image (K, J, I) int16, discs (K, J, I) uint8): 8 sagittal slices of 40 x 32 voxels, four vertebral blocks
    and three discs between them on the 6 middle slices; numpy only."""
    image = np.full((8, 40, 32), 10, np.int16)
    discs = np.zeros(image.shape, np.uint8)
    for top in (2, 12, 22, 32):
        image[:, top:top + 6, 8:24] = 100  # vertebral bodies
    for top in (8, 18, 28):
        discs[1:7, top:top + 4, 8:24] = 1
    image[discs > 0] = 150
    return image, discs


def addBlockSpineVolume(name="Block spine", scene=None):
    """A scalar volume node of :func:`blockSpine` on BLOCK_SPINE_IJK_TO_RAS; returns (node, discs)."""
    scene = scene or slicer.mrmlScene
    image, discs = blockSpine()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, image)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(BLOCK_SPINE_IJK_TO_RAS))
    node.CreateDefaultDisplayNodes()
    return node, discs


def addPhantomVolume(name="Synthetic spine"):
    """A scalar volume node with the synthetic spine (needs OpenCV); returns (node, truth (K, J, I) uint8)."""
    from ivdseg.data.phantom import synthetic_spine_volume

    image, truth = synthetic_spine_volume()
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, image.array.astype(np.int16))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(image.ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node, truth.array


def _placeUnderPatient(volumeNode, patientID, studyUID):
    """Puts a volume under DICOM patient and study items, as Slicer's DICOM module does."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    patient = shNode.GetItemByUID("DICOM", patientID)
    if not patient:
        patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Doe^Jane")  # the same name for both patients
        shNode.SetItemUID(patient, "DICOM", patientID)
    study = shNode.CreateStudyItem(patient, "MR lumbar")
    shNode.SetItemUID(study, "DICOM", studyUID)
    item = shNode.GetItemByDataNode(volumeNode) or shNode.CreateItem(study, volumeNode)
    shNode.SetItemParent(item, study)
    return study


def _tag(segment, key):
    value = vtk.reference("")
    return str(value) if segment.GetTag(key, value) else None


# ------------------------------------------------------------------ logic scenarios (always run)
def scenarioVolumeGeometryRoundTrip(testCase):
    """Node -> the worker's input file (Slicer's storage node) -> node keeps every voxel where it was, on the
    hand-written grid; a labelmap written back on that grid is imported on the volume's grid unmirrored. The grid
    is left-handed on purpose: Slicer's reader reverses such an axis, which the import must undo."""
    volumeNode, discs = addBlockSpineVolume("Geometry test")
    np.testing.assert_allclose(ijkToRasArray(volumeNode), BLOCK_SPINE_IJK_TO_RAS, atol=1e-9)
    testCase.assertLess(np.linalg.det(BLOCK_SPINE_IJK_TO_RAS[:3, :3]), 0)
    folder = Path(tempfile.mkdtemp(prefix="ivdseg-geometry-test-"))
    try:
        writeVolumeNode(volumeNode, folder / "input.nrrd")
        reread = slicer.vtkMRMLScalarVolumeNode()
        storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
        storage.SetFileName(str(folder / "input.nrrd"))
        testCase.assertTrue(storage.ReadData(reread))
        # The same voxel centres: the first voxel of the re-read grid is the hand-written grid's far k end.
        mirrored = BLOCK_SPINE_IJK_TO_RAS.copy()
        mirrored[:3, 3] += 7 * BLOCK_SPINE_IJK_TO_RAS[:3, 2]
        mirrored[:3, 2] *= -1
        np.testing.assert_allclose(ijkToRasArray(reread), mirrored, atol=1e-6)
        np.testing.assert_array_equal(arrayOnGrid(reread, BLOCK_SPINE_IJK_TO_RAS), blockSpine()[0])
        half = discs.copy()
        half[:4] = 0  # not symmetric along k: a mirrored import would show
        training.writeLabelArray(half, volumeNode, folder / "labels.nrrd")
        np.testing.assert_array_equal(readLabelArray(folder / "labels.nrrd", volumeNode), half)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _blockCard():
    card = read_card(resolve_model())
    return {**card, "name": "block-test-model", "version": "0"}


def scenarioSegmentationFromLabelmap(testCase):
    """A model's labelmap becomes named, coloured segments with the extension's terminology and automatic-algorithm
    tags, on the volume's grid, beside the volume under its study."""
    card = _blockCard()
    volumeNode, discs = addBlockSpineVolume("Segmentation test")
    study = _placeUnderPatient(volumeNode, "PID-1", "1.2.3.1")
    segNode = segmentationFromLabelmap(discs, volumeNode, card)
    segmentation = segNode.GetSegmentation()
    testCase.assertEqual(segmentation.GetNumberOfSegments(), len(card["classes"]))
    disc = segmentation.GetSegment("Segment_1")
    testCase.assertEqual(disc.GetName(), "intervertebral disc")
    np.testing.assert_allclose(disc.GetColor(), card["classes"][0]["color"], atol=1e-6)
    entry = _tag(disc, "TerminologyEntry")
    testCase.assertTrue(entry.startswith(CONTEXT_NAME + "~SCT^123037004^Anatomical Structure~SCT^360499006^"), entry)
    testCase.assertEqual(_tag(disc, "DICOM.SegmentAlgorithmType"), "AUTOMATIC")
    testCase.assertEqual(_tag(disc, "DICOM.SegmentAlgorithmName"), "block-test-model 0")
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "Segment_1", volumeNode)
    testCase.assertEqual(int(mask.sum()), BLOCK_SPINE_DISC_VOXELS)
    np.testing.assert_array_equal(mask > 0, discs > 0)
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    testCase.assertEqual(shNode.GetItemParent(shNode.GetItemByDataNode(segNode)), study)
    return segNode


def scenarioSegmentationReplacesOwnResult(testCase):
    """A second result of the same model replaces the first; another model's result is left alone; a failing
    update leaves no new node."""
    card = _blockCard()
    volumeNode, discs = addBlockSpineVolume("Replace test")
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "other model's result")
    other.SetAttribute(MODEL_ATTRIBUTE, "another-model")
    other.SetAttribute(INPUT_ATTRIBUTE, volumeNode.GetID())
    first = segmentationFromLabelmap(discs, volumeNode, card)
    count = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    fewer = discs.copy()
    fewer[:, 8:12] = 0  # the first disc gone
    second = segmentationFromLabelmap(fewer, volumeNode, card)
    testCase.assertEqual(first.GetID(), second.GetID())
    testCase.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), count)
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(second, "Segment_1", volumeNode)
    testCase.assertEqual(int(mask.sum()), BLOCK_SPINE_DISC_VOXELS * 2 // 3)
    testCase.assertEqual(other.GetAttribute(MODEL_ATTRIBUTE), "another-model")
    wrongGrid, _ = addBlockSpineVolume("Wrong grid")
    before = slicer.mrmlScene.GetNumberOfNodes()
    with testCase.assertRaises(ValueError):
        segmentationFromLabelmap(discs[:, :10], wrongGrid, card)
    testCase.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)


def scenarioTerminologyContextLoads(testCase, terminologiesLogic):
    """The extension's terminology context loads into Slicer's Terminologies logic and holds every type the
    models name, so the terminology selector can show a disc segment's type."""
    testCase.assertEqual(loadTerminologyContext(terminologiesLogic), CONTEXT_NAME)
    testCase.assertIn(CONTEXT_NAME, loadedContextNames(terminologiesLogic))
    testCase.assertEqual(ensureTerminologyContext(terminologiesLogic), CONTEXT_NAME)  # loaded once, not twice
    testCase.assertEqual(loadedContextNames(terminologiesLogic).count(CONTEXT_NAME), 1)
    found = set()
    category = slicer.vtkSlicerTerminologyCategory()
    typeObject = slicer.vtkSlicerTerminologyType()
    for c in range(terminologiesLogic.GetNumberOfCategoriesInTerminology(CONTEXT_NAME)):
        terminologiesLogic.GetNthCategoryInTerminology(CONTEXT_NAME, c, category)
        for t in range(terminologiesLogic.GetNumberOfTypesInTerminologyCategory(CONTEXT_NAME, category)):
            terminologiesLogic.GetNthTypeInTerminologyCategory(CONTEXT_NAME, category, t, typeObject)
            found.add((typeObject.GetCodingSchemeDesignator(), typeObject.GetCodeValue(), typeObject.GetCodeMeaning()))
    testCase.assertEqual(found, set(TYPES.values()))


def scenarioTrainingPairsAndCurves(testCase):
    """Pairs are found by reference geometry; two DICOM patients of the same name stay two patients; epoch events
    become a table and a two-series plot chart."""
    volumes = []
    for n, patientID in enumerate(("PID-A", "PID-B")):
        volumeNode, discs = addBlockSpineVolume(f"Pair test {n}")
        _placeUnderPatient(volumeNode, patientID, f"1.2.3.{10 + n}")
        segNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"Pair test {n} discs")
        segNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segNode.GetSegmentation().AddEmptySegment("L4-L5", "L4-L5")
        slicer.util.updateSegmentBinaryLabelmapFromArray(discs, segNode, segmentId, volumeNode)
        volumes.append(volumeNode.GetID())
    pairs = [pair for pair in training.casePairsFromScene() if pair.volumeNode.GetID() in volumes]
    testCase.assertEqual(len(pairs), 2)
    testCase.assertEqual(training.segmentNames(pairs), ["L4-L5"])
    summary = training.summarize(pairs, {"intervertebral disc": ["L4-L5"]})
    testCase.assertEqual(summary, {"patients": 2, "series": 2, "seriesPerClass": {"intervertebral disc": 2}})
    events = [{"event": "epoch", "epoch": e, "loss": 1.0 / e, "val_dice": 0.5 + 0.1 * e} for e in (1, 2, 3)]
    table, chart = training.TrainingLogic.updateCurves(events)
    testCase.assertEqual(table.GetNumberOfRows(), 3)
    testCase.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
    np.testing.assert_allclose(slicer.util.arrayFromTableColumn(table, "val_dice"), [0.6, 0.7, 0.8])


def scenarioOverlappingSegments(testCase):
    """A model whose classes overlap (one bit per class in the worker's labelmap): one segment per class, sharing
    voxels, each exactly its class's mask (Slicer keeps them in separate layers)."""
    from ivdseg.data.labels import bits_from_masks

    volumeNode, discs = addBlockSpineVolume("Overlap test")
    masks = np.stack([discs > 0, np.roll(discs > 0, 2, axis=1)], axis=-1)  # the second shares most voxels
    testCase.assertTrue((masks[..., 0] & masks[..., 1]).any())
    card = {**_blockCard(), "overlapping": True,
            "classes": [{"value": 1, "name": "stomach", "color": [1.0, 0.0, 0.0]},
                        {"value": 2, "name": "large bowel", "color": [0.0, 0.8, 0.0]}]}
    segNode = segmentationFromLabelmap(bits_from_masks(masks), volumeNode, card)
    segmentation = segNode.GetSegmentation()
    testCase.assertEqual(segmentation.GetNumberOfSegments(), 2)
    for k in range(2):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, segmentation.GetNthSegmentID(k), volumeNode)
        np.testing.assert_array_equal(mask > 0, masks[..., k])
    return segNode, masks


def runLogicScenarios(testCase, terminologiesLogic):
    """The scenarios that need no optional package."""
    scenarioVolumeGeometryRoundTrip(testCase)
    scenarioSegmentationFromLabelmap(testCase)
    scenarioOverlappingSegments(testCase)
    scenarioSegmentationReplacesOwnResult(testCase)
    scenarioTerminologyContextLoads(testCase, terminologiesLogic)
    scenarioTrainingPairsAndCurves(testCase)


# ------------------------------------------------------------------ inference scenarios (the worker)
def _dice(a, b):
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def scenarioSegmentSyntheticVolume(testCase, modelPath=None, minDice=0.5, idle=None):
    """The bundled model through the real worker on the synthetic spine: segments as the card says, discs found."""
    modelPath = str(modelPath or resolve_model())
    card = read_card(modelPath)
    volumeNode, truth = addPhantomVolume()
    events = []
    segNode = SegmentationLogic().segment(volumeNode, modelPath, device="cpu", batchSize=8,
                                          progressCallback=events.append, timeout=600, idle=idle)
    testCase.assertTrue(any(e["event"] == "progress" for e in events))
    segmentation = segNode.GetSegmentation()
    testCase.assertEqual(segmentation.GetNumberOfSegments(), len(card["classes"]))
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, "Segment_1", volumeNode)
    testCase.assertEqual(mask.shape, truth.shape)
    testCase.assertGreater(_dice(mask, truth), minDice)
    return segNode


def scenarioDiscLevels(testCase, modelPath=None, idle=None):
    """With levels: one segment per disc (named, superior first), the disc centres as a point list and the
    measurements as a table beside it; a second run replaces all three, a run without levels removes the points
    and the table that no longer describe the result."""
    from .nodes import KIND_ATTRIBUTE, findResultNode

    modelPath = str(modelPath or resolve_model())
    card = read_card(modelPath)
    volumeNode, truth = addPhantomVolume("Levels test")
    logic = SegmentationLogic()
    segNode = logic.segment(volumeNode, modelPath, device="cpu", batchSize=8, timeout=600, idle=idle, levels=True)
    segmentation = segNode.GetSegmentation()
    n = segmentation.GetNumberOfSegments()
    testCase.assertGreaterEqual(n, 3)
    names = [segmentation.GetNthSegment(k).GetName() for k in range(n)]
    testCase.assertTrue(all("intervertebral disc" in name for name in names))
    points = findResultNode(slicer.mrmlScene, volumeNode, card["name"], "vtkMRMLMarkupsFiducialNode", "disc centres")
    table = findResultNode(slicer.mrmlScene, volumeNode, card["name"], "vtkMRMLTableNode", "disc measurements")
    testCase.assertIsNotNone(points)
    testCase.assertIsNotNone(table)
    testCase.assertEqual(points.GetNumberOfControlPoints(), n)
    testCase.assertEqual(table.GetNumberOfRows(), n)
    heights = []
    for k in range(n):
        pos = [0.0, 0.0, 0.0]
        points.GetNthControlPointPosition(k, pos)
        heights.append(pos[2])
    testCase.assertEqual(heights, sorted(heights, reverse=True))  # superior first
    depth = table.GetTable().GetColumnByName("ap_depth_mm")
    testCase.assertTrue(all(depth.GetValue(k) > 0 for k in range(n)))
    before = slicer.mrmlScene.GetNumberOfNodes()
    again = logic.segment(volumeNode, modelPath, device="cpu", batchSize=8, timeout=600, idle=idle, levels=True)
    testCase.assertIs(again, segNode)
    testCase.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)  # replaced, not added
    logic.segment(volumeNode, modelPath, device="cpu", batchSize=8, timeout=600, idle=idle)
    testCase.assertEqual(segNode.GetSegmentation().GetNumberOfSegments(), len(card["classes"]))
    remaining = [node for node in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode")
                 + slicer.util.getNodesByClass("vtkMRMLTableNode") if node.GetAttribute(KIND_ATTRIBUTE)]
    testCase.assertEqual(remaining, [])
    return segNode


def scenarioCancelLeavesSceneUnchanged(testCase, modelPath=None, idle=None):
    """Cancel ends the worker within a second and the scene is as it was before Apply."""
    idle = idle or _sleep
    modelPath = str(modelPath or resolve_model())
    volumeNode, _ = addPhantomVolume("Cancel test")
    before = slicer.mrmlScene.GetNumberOfNodes()
    logic = SegmentationLogic()
    job = logic.startSegmentation(volumeNode, modelPath, device="cpu", batchSize=1)
    while not job.poll() and not job.finished:  # until the worker has started working
        idle()
    t0 = time.monotonic()
    job.cancel()
    while not job.finished:
        idle()
    testCase.assertLess(time.monotonic() - t0, 1.0)
    with testCase.assertRaisesRegex(RuntimeError, "cancelled"):
        logic.finishSegmentation(job)
    testCase.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)


def scenarioWorkerFailureIsReadable(testCase, brokenModelPath, idle=None):
    """A model that does not load becomes one readable error; no node is added."""
    volumeNode, _ = addBlockSpineVolume("Failure test")
    before = slicer.mrmlScene.GetNumberOfNodes()
    with testCase.assertRaises(RuntimeError) as raised:
        SegmentationLogic().segment(volumeNode, str(brokenModelPath), device="cpu", timeout=300, idle=idle)
    message = str(raised.exception)
    testCase.assertNotIn("Traceback", message)
    testCase.assertEqual(len([line for line in message.splitlines() if line.strip()]), 1)
    testCase.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), before)


def scenarioCorrectPoints(testCase, modelPath=None):
    """Correct points with the keypoint model the disc model's card names: after a drag the dragged point stays
    exactly where it was put and is locked, the model moves the others, and undo puts every point back."""
    modelPath = str(modelPath or resolve_model())
    keypoints = read_card(resolve_model(read_card(modelPath)["keypoint_model"]))["keypoints"]
    volumeNode, _truth = addPhantomVolume("Correction test")
    bounds = [0.0] * 6
    volumeNode.GetRASBounds(bounds)
    centre = np.array([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Disc centres")
    for n, label in enumerate(keypoints):
        points.AddControlPoint(vtk.vtkVector3d(*(centre + [0.0, 0.0, 15.0 * (len(keypoints) // 2 - n)])), label)

    def positions():
        out = np.zeros((points.GetNumberOfControlPoints(), 3))
        for n in range(len(out)):
            points.GetNthControlPointPosition(n, out[n])
        return out

    logic, seen = SegmentationLogic(), []
    logic.startPointCorrection(volumeNode, points, None, modelPath, onCorrected=lambda moved, s: seen.append(moved))
    try:
        before = positions()
        dragged = before[1] + [0.0, 2.0, -3.0]
        points.SetNthControlPointPosition(1, *dragged)
        points.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
        after = positions()
        testCase.assertEqual(seen, [[keypoints[1]]])
        testCase.assertTrue(np.allclose(after[1], dragged) and points.GetNthControlPointLocked(1))
        testCase.assertFalse(np.allclose(np.delete(after, 1, axis=0), np.delete(before, 1, axis=0)))
        testCase.assertTrue(logic.undoPointCorrection())
        testCase.assertTrue(np.allclose(positions(), before))
    finally:
        logic.stopPointCorrection()


def missingForInference() -> list:
    """The inference packages this Python lacks (the worker runs with it): empty when the scenarios can run."""
    return dependencies.missingInferencePackages()


def runInferenceScenarios(testCase, modelPath=None, idle=None):
    scenarioSegmentSyntheticVolume(testCase, modelPath, idle=idle)
    scenarioDiscLevels(testCase, modelPath, idle=idle)
    scenarioCancelLeavesSceneUnchanged(testCase, modelPath, idle=idle)
    if read_card(str(modelPath or resolve_model())).get("keypoint_model"):
        scenarioCorrectPoints(testCase, modelPath)


# ------------------------------------------------------------------ training scenario (the worker, TensorFlow)
def missingForTraining() -> list:
    return dependencies.missingTrainingPackages() + dependencies.missingInferencePackages()


def runTrainingScenario(testCase, timeout=900, idle=None):
    """Two synthetic cases of two patients exported in the worker, one epoch of a small U-Net (64 px) trained in
    the worker and continued for a second from its checkpoint, its curves in a chart, the package installed and
    listed."""
    pairs = []
    for n in range(2):
        volumeNode, truth = addPhantomVolume(f"Training case {n}")
        _placeUnderPatient(volumeNode, f"TRAIN-{n}", f"1.2.3.{20 + n}")
        segNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"Training case {n} discs")
        segNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segNode.GetSegmentation().AddEmptySegment("disc", "disc")
        slicer.util.updateSegmentBinaryLabelmapFromArray((truth > 0).astype(np.uint8), segNode, segmentId, volumeNode)
        pairs.append(training.CasePair(volumeNode, segNode))
    classMap = {"intervertebral disc": ["disc"]}
    workDir = Path(tempfile.mkdtemp(prefix="ivdseg-training-test-"))
    userModels = os.environ.get("IVDSEG_USER_MODELS")
    os.environ["IVDSEG_USER_MODELS"] = str(workDir / "models")  # keep the user's model folder untouched
    try:
        logic = training.TrainingLogic()
        info = logic.exportDataset(pairs, classMap, workDir / "dataset", sizes=(64,), valFraction=0.5, seed=0,
                                   timeout=timeout)
        testCase.assertEqual(len(info.cases), 2)
        testCase.assertEqual(len({meta["patient"] for meta in info.cases.values()}), 2)
        job = logic.startTraining(workDir / "dataset", workDir / "run", size=64, epochs=1, batchSize=4,
                                  name="training-panel-test", extraArgs=["--depth", "3", "--base-filters", "8"])
        testCase.assertEqual(job.wait(timeout=timeout, idle=idle), 0, job.errorMessage() + "\n" + job.log[-4000:])
        table, chart = logic.updateCurves(job.events)
        testCase.assertEqual(table.GetNumberOfRows(), 1)
        # the panel's "continue": one more epoch from the checkpoint, the curves holding the whole run
        earlier = training.earlierRun(workDir / "run")
        testCase.assertTrue(earlier["resumable"])
        testCase.assertEqual(earlier["epoch"], 1)
        job = logic.startTraining(workDir / "dataset", workDir / "run", size=64, epochs=2, batchSize=4,
                                  name="training-panel-test", extraArgs=["--depth", "3", "--base-filters", "8"],
                                  resume=True)
        testCase.assertEqual(job.wait(timeout=timeout, idle=idle), 0, job.errorMessage() + "\n" + job.log[-4000:])
        testCase.assertEqual([e["epoch"] for e in job.events if e.get("event") == "epoch"], [2])
        table, chart = logic.updateCurves(earlier["epochs"] + job.events, table, chart)
        testCase.assertEqual(table.GetNumberOfRows(), 2)
        installed = SegmentationLogic().installModel(str(logic.packageOf(job, workDir / "run")))
        testCase.assertIsNotNone(installed.validationDice)
        listed = [(m.name, m.version) for m in SegmentationLogic().listModels()]
        testCase.assertIn(("training-panel-test", installed.version), listed)
        card = json.loads((Path(installed.path) / "model.json").read_text())
        testCase.assertEqual(card["training"]["train_patients"] + card["training"]["val_patients"], 2)
    finally:
        if userModels is None:
            os.environ.pop("IVDSEG_USER_MODELS", None)
        else:
            os.environ["IVDSEG_USER_MODELS"] = userModels
        shutil.rmtree(workDir, ignore_errors=True)
