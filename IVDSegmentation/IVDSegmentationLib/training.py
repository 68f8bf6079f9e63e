"""TrainingLogic: the training panel without the GUI.

Pairs of (image volume, segmentation) from the scene become de-identified datasets through the same
core code as ``ivdseg export``; training runs ``ivdseg train`` in the worker; its epoch events feed a
table and a plot chart node (live curves); the finished package is registered in the model list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer

from ivdseg.errors import IvdsegError
from ivdseg.data.export import ExportOptions, RawCase, export_dataset
from ivdseg.io.geometry import Volume, sagittal_slices

from .nodes import ijkToRasArray, volumeFromNode
from .worker import WorkerJob


class ExportCancelled(Exception):
    pass


@dataclass
class CasePair:
    volumeNode: object
    segmentationNode: object

    @property
    def label(self) -> str:
        return f"{self.volumeNode.GetName()} + {self.segmentationNode.GetName()}"


def _referencedVolume(segNode):
    ref = segNode.GetNodeReference("referenceImageGeometryRef")
    return ref if ref is not None and ref.IsA("vtkMRMLScalarVolumeNode") else None


def casePairsFromScene(scene=None) -> list:
    """Every segmentation node whose reference geometry is a scalar volume, paired with that volume.

    A DICOM SEG loaded by Slicer references the series it was drawn on the same way, so pairs from the
    DICOM database are found here once their series are loaded.
    """
    scene = scene or slicer.mrmlScene
    pairs = []
    for seg in scene.GetNodesByClass("vtkMRMLSegmentationNode"):
        volume = _referencedVolume(seg)
        if volume is not None:
            pairs.append(CasePair(volume, seg))
    return pairs


def segmentNames(pairs) -> list:
    """Sorted segment names over all pairs (what the user maps to classes)."""
    names = set()
    for p in pairs:
        seg = p.segmentationNode.GetSegmentation()
        names.update(seg.GetSegment(seg.GetNthSegmentID(i)).GetName() for i in range(seg.GetNumberOfSegments()))
    return sorted(names)


def patientOf(volumeNode, scene=None) -> str:
    """The patient identifier of a volume (DICOM patient item of the subject hierarchy, else the node
    name). It is only used in memory: the export turns it into a keyed-hash pseudonym."""
    scene = scene or slicer.mrmlScene
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = shNode.GetItemByDataNode(volumeNode) if shNode else 0
    while item and item != shNode.GetSceneItemID():
        if shNode.GetItemLevel(item) == "Patient":
            for key in ("DICOM.PatientID", "DICOM.PatientName"):
                value = shNode.GetItemAttribute(item, key)
                if value:
                    return value
            return shNode.GetItemName(item)
        item = shNode.GetItemParent(item)
    return volumeNode.GetName()


def labelArray(pair: CasePair, classMap: dict, classes: list) -> np.ndarray:
    """(K, J, I) uint8 labels on the volume's grid: class value = index in ``classes`` + 1.

    Raises:
        ValueError: the segmentation was drawn on another grid than its volume.
    """
    volumeNode, segNode = pair.volumeNode, pair.segmentationNode
    _checkGeometry(pair)
    shape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
    labels = np.zeros(shape, np.uint8)
    segmentation = segNode.GetSegmentation()
    byName = {segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName(): segmentation.GetNthSegmentID(i)
              for i in range(segmentation.GetNumberOfSegments())}
    for className, names in classMap.items():
        value = classes.index(className) + 1
        for name in names:
            if name in byName:
                mask = slicer.util.arrayFromSegmentBinaryLabelmap(segNode, byName[name], volumeNode)
                labels[mask > 0] = value
    return labels


def _checkGeometry(pair: CasePair):
    segNode, volumeNode = pair.segmentationNode, pair.volumeNode
    geometry = segNode.GetSegmentation().GetConversionParameter("Reference image geometry")
    if not geometry:
        return
    # 16 IJK-to-RAS numbers row by row, then the extent, each followed by ";"
    values = [float(v) for v in geometry.split(";") if v.strip()]
    matrix = np.array(values[:16]).reshape(4, 4)
    ours = ijkToRasArray(volumeNode)
    dims = volumeNode.GetImageData().GetDimensions()
    extent = values[16:22]
    theirDims = (int(extent[1] - extent[0] + 1), int(extent[3] - extent[2] + 1), int(extent[5] - extent[4] + 1))
    if not np.allclose(matrix, ours, atol=1e-3) or tuple(dims) != theirDims:
        raise ValueError(f"Segmentation '{segNode.GetName()}' was drawn on another grid than volume "
                         f"'{volumeNode.GetName()}'; set its reference geometry to the volume and resample it.")


def rawCases(pairs, classMap: dict, classes: list, source="scene"):
    """Yields a RawCase (sagittal slices, mapped labels, in-memory patient ID) for each pair."""
    for pair in pairs:
        volume = volumeFromNode(pair.volumeNode)
        labels = labelArray(pair, classMap, classes)
        image, mapping = sagittal_slices(volume)
        label, _ = sagittal_slices(Volume(labels, volume.ijk_to_ras))
        yield RawCase(patient=patientOf(pair.volumeNode), source=source, image=image, label=label,
                      pixel_spacing_mm=tuple(float(s) for s in mapping.pixel_spacing_mm),
                      slice_spacing_mm=float(mapping.slice_spacing_mm), origin=pair.label)


def summarize(pairs, classMap: dict, classes: list) -> dict:
    """Patients, series and labelled slices the pairs would give (what the panel shows before export)."""
    patients, labelled, slicesPerClass = set(), 0, {c: 0 for c in classes}
    for case in rawCases(pairs, classMap, classes):
        patients.add(case.patient)
        per_slice = case.label.reshape(len(case.label), -1)
        labelled += int(per_slice.any(axis=1).sum())
        for i, c in enumerate(classes, start=1):
            slicesPerClass[c] += int((per_slice == i).any(axis=1).sum())
    return {"patients": len(patients), "series": len(pairs), "labelledSlices": labelled,
            "slicesPerClass": slicesPerClass}


class TrainingLogic:
    def __init__(self, workerPython: str | None = None):
        self.workerPython = workerPython or None

    def exportDataset(self, pairs, classMap: dict, outputFolder, sizes=(128, 192, 256), valFraction=0.1,
                      seed=0, backgroundChannel=True, overwrite=False, progressCallback=None, cancelRequested=None):
        """Writes the dataset folder atomically; returns the opened DatasetInfo.

        Args:
            pairs: CasePairs to export.
            classMap: output class name -> segment names that form it.
            progressCallback: called with (done pairs, total pairs).
            cancelRequested: callable returning True to stop; the folder is then left as it was.

        Raises:
            ValueError: no pairs, a geometry mismatch, a class with no voxel, an unwritable or full destination
                (one sentence).
        """
        if not pairs:
            raise ValueError("No (volume, segmentation) pairs to export; add segmentations of your volumes first.")
        classes = list(classMap)
        total = len(pairs)

        def progress(done, _total, _stage):
            if cancelRequested and cancelRequested():
                raise ExportCancelled()
            if progressCallback:
                progressCallback(done, total)

        options = ExportOptions(sizes=tuple(sizes), background_channel=backgroundChannel,
                                val_fraction=valFraction, seed=seed)
        try:
            return export_dataset(rawCases(pairs, classMap, classes), classes, outputFolder, options,
                                  overwrite=overwrite, progress=progress)
        except IvdsegError as exc:
            raise ValueError(str(exc)) from None
        except OSError as exc:
            raise ValueError(f"Cannot write the dataset to {outputFolder} ({exc.strerror}).") from None

    def startTraining(self, datasetFolder, runFolder, network="unet2d", size=256, activation="relu", epochs=50,
                      batchSize=8, learningRate=1e-3, loss="dice_ce", name="my-model", extraArgs=()) -> WorkerJob:
        """Launches ``ivdseg train`` in the worker; epoch events arrive through job.poll()."""
        args = ["train", datasetFolder, "-o", runFolder, "--network", network, "--size", int(size),
                "--activation", activation, "--epochs", int(epochs), "--batch-size", int(batchSize),
                "--learning-rate", float(learningRate), "--loss", loss, "--name", name, "--progress", "jsonl",
                *map(str, extraArgs)]
        return WorkerJob(args, python=self.workerPython)

    @staticmethod
    def stopTraining(job: WorkerJob, grace=120.0):
        """Asks the worker to stop (SIGTERM): it packages the best model so far, then ends."""
        job.cancel(grace=grace)

    @staticmethod
    def updateCurves(events, tableNode=None, chartNode=None, scene=None):
        """Epoch events -> a table (epoch, loss, val_dice) and a plot chart with one series per curve.

        Returns (tableNode, chartNode), created on the first call.
        """
        scene = scene or slicer.mrmlScene
        epochs = [e for e in events if e.get("event") == "epoch"]
        if tableNode is None:
            tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", "Training curves")
        columns = {"epoch": [e["epoch"] for e in epochs],
                   "loss": [e.get("loss") or np.nan for e in epochs],
                   "val_dice": [e.get("val_dice") or np.nan for e in epochs]}
        slicer.util.updateTableFromArray(tableNode, [np.asarray(v, np.float64) for v in columns.values()],
                                         list(columns))
        if chartNode is None:
            chartNode = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "Training curves")
            chartNode.SetTitle("Training")
            chartNode.SetXAxisTitle("epoch")
            for column, color in (("loss", (0.85, 0.3, 0.2)), ("val_dice", (0.2, 0.5, 0.9))):
                series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", column)
                series.SetAndObserveTableNodeID(tableNode.GetID())
                series.SetXColumnName("epoch")
                series.SetYColumnName(column)
                series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
                series.SetColor(*color)
                chartNode.AddAndObservePlotSeriesNodeID(series.GetID())
        return tableNode, chartNode

    @staticmethod
    def packageOf(job: WorkerJob, runFolder) -> Path:
        """The model package a finished training wrote, or RuntimeError with the worker's reason."""
        job.poll()
        package = Path(runFolder) / "model"
        done = [e for e in job.events if e.get("event") == "done"]
        if done and (package / "model.json").is_file():
            return package
        raise RuntimeError(job.errorMessage())
