"""TrainingLogic: the training panel without the GUI.

Pairs of (image volume, segmentation) from the scene become de-identified datasets through the same core code as
``ivdseg export``, run in the worker like training: the Slicer side only writes each pair (volume and mapped
labelmap, with Slicer's storage nodes) into a private temporary folder, with a spec naming each series' patient by
a keyed hash, never by its DICOM identity. Training runs ``ivdseg train`` in the worker; its epoch events feed a
table and a plot chart node (live curves); the finished package is registered in the model list.

Nothing here copies voxel arrays on GUI events: the pair list and its summary read node names and the subject
hierarchy only; voxels are touched once, when the export is started.
"""

from __future__ import annotations

import csv
import json
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer

from .nodes import ijkToRasArray, writeVolumeNode
from .worker import WorkerJob

SCENE_SOURCE = "scene"
# The export checks for a stop between cases (a case takes a second or two): it is killed only after this.
EXPORT_CANCEL_GRACE_S = 10.0


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
    """The patient identity of a volume, in memory only (the export receives its keyed hash).

    The volume's patient item in the subject hierarchy names it: its DICOM UID (the PatientID, as Slicer's DICOM
    module and IVDSegmentationLib.dicomdb set it), else its DICOM.PatientID / DICOM.PatientName attribute, else
    the item's name. A volume outside any patient item is its own patient (its node ID: unique in the scene,
    unlike names, which users reuse).
    """
    scene = scene or slicer.mrmlScene
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = shNode.GetItemByDataNode(volumeNode) if shNode else 0
    while item and item != shNode.GetSceneItemID():
        if shNode.GetItemLevel(item) == "Patient":
            uid = shNode.GetItemUID(item, "DICOM")
            if uid:
                return f"dicom:{uid}"
            for key in ("DICOM.PatientID", "DICOM.PatientName"):
                value = shNode.GetItemAttribute(item, key)
                if value:
                    return f"dicom:{value}"
            return f"item:{shNode.GetItemName(item)}"
        item = shNode.GetItemParent(item)
    return f"node:{volumeNode.GetID()}"


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


def writePairs(pairs, classMap: dict, folder, source: str = SCENE_SOURCE) -> Path:
    """Writes the pairs for the worker's export into ``folder``; returns the export spec it wrote there.

    Each pair becomes ``caseN.nrrd`` (the volume, Slicer's storage node) and ``caseN-label.nrrd`` (the mapped
    classes, value = index in ``classMap`` + 1, on the volume's grid). The spec's patient of each pair is a keyed
    hash (a random key, forgotten when this returns) and its sort order the rank of the real identity, so the
    seeded split is the same whatever the key.

    Raises:
        ValueError: a segmentation drawn on another grid than its volume, or a file that could not be written.
    """
    from ivdseg.data.export import pseudonym  # needs OpenCV (through the export): imported on use

    folder = Path(folder)
    classes = list(classMap)
    key = secrets.token_bytes(32)
    identities = [patientOf(pair.volumeNode) for pair in pairs]
    rank = {identity: n for n, identity in enumerate(sorted(set(identities)))}
    entries = []
    for n, (pair, identity) in enumerate(zip(pairs, identities)):
        image, label = f"case{n}.nrrd", f"case{n}-label.nrrd"
        labels = labelArray(pair, classMap, classes)
        writeVolumeNode(pair.volumeNode, folder / image)
        writeLabelArray(labels, pair.volumeNode, folder / label)
        entries.append({"image": image, "label": label, "patient": pseudonym(key, source, identity),
                        "order": f"{rank[identity]:08d}"})
    spec = {"classes": classes, "sources": [{"name": source, "kind": "pairs", "root": ".", "pairs": entries,
                                             "classes": {c: [i + 1] for i, c in enumerate(classes)}}]}
    path = folder / "spec.json"
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path


def writeLabelArray(labels: np.ndarray, referenceVolumeNode, path) -> None:
    """Writes a (K, J, I) uint8 array on the reference volume's grid as a labelmap NRRD (Slicer's storage node)."""
    node = slicer.vtkMRMLLabelMapVolumeNode()
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(labels, np.uint8))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRasArray(referenceVolumeNode)))
    writeVolumeNode(node, path)


def summarize(pairs, classMap: dict) -> dict:
    """Patients, series and, per class, the series holding one of its segments: what the panel shows before an
    export. Reads names and the subject hierarchy only, never voxels (cheap enough for every GUI change)."""
    patients = {patientOf(pair.volumeNode) for pair in pairs}
    seriesPerClass = {}
    for className, names in classMap.items():
        wanted = set(names)
        seriesPerClass[className] = sum(1 for pair in pairs if wanted & set(segmentNames([pair])))
    return {"patients": len(patients), "series": len(pairs), "seriesPerClass": seriesPerClass}


def earlierRun(runFolder):
    """What a run folder holds from an earlier ``ivdseg train``: None if nothing (no checkpoint); else a dict with
    ``resumable`` (its last checkpoint and training state are there, so ``--resume`` can continue it), ``epoch``
    (the epoch that checkpoint ended, when resumable), ``epochs`` (the epoch events of its log up to that epoch,
    for the curves: epoch from 1, loss, val_dice). Reads two small files; no TensorFlow."""
    folder = Path(runFolder)
    checkpoints = folder / "checkpoints"
    if not checkpoints.is_dir() or not any(checkpoints.iterdir()):
        return None
    epochs = []
    try:
        with open(folder / "log.csv", newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                if None in row.values() or None in row:  # fewer or more fields than the header: a row cut short
                    break
                try:
                    epochs.append({"event": "epoch", "epoch": int(row["epoch"]) + 1,
                                   "loss": float(row["loss"]) if row.get("loss") else None,
                                   "val_dice": float(row["val_dice"]) if row.get("val_dice") else None})
                except (KeyError, TypeError, ValueError):  # e.g. a number cut short by a kill
                    break
    except (OSError, UnicodeDecodeError, csv.Error):
        epochs = []
    try:  # the epoch the checkpoint holds: a row logged after it (a kill in between) is trained again
        done = json.loads((checkpoints / "state.json").read_text(encoding="utf-8"))["epoch"]
        resumable = (checkpoints / "last.keras").is_file() and isinstance(done, int)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        done, resumable = None, False
    latest = {e["epoch"]: e for e in epochs if done is None or e["epoch"] <= done}  # a repeated epoch: its last row
    return {"resumable": resumable, "epoch": done if resumable else None, "epochs": [latest[k] for k in sorted(latest)]}


def _checkFractions(valFraction, testFraction) -> None:
    if not 0.0 < float(valFraction) < 1.0:
        raise ValueError(f"The validation fraction must lie between 0 and 1, not {valFraction}.")
    if not 0.0 <= float(testFraction) < 1.0 - float(valFraction):
        raise ValueError(f"The test fraction {testFraction} with the validation fraction {valFraction} leaves no "
                         "patient for training; lower one of them.")


class ExportJob:
    """An export running in the worker, with the private folder of its input files (removed by finishExport)."""

    def __init__(self, worker: WorkerJob, tmpdir: str, outputFolder: Path):
        self.worker, self.tmpdir, self.outputFolder = worker, tmpdir, Path(outputFolder)

    def poll(self):
        return self.worker.poll()

    @property
    def finished(self):
        return self.worker.finished

    def cancel(self):
        """Asks the worker to stop at the next case (it then removes its unfinished folder); kills it later."""
        self.worker.cancel(grace=EXPORT_CANCEL_GRACE_S)

    def removeLeftovers(self) -> None:
        """Removes the staging folder a killed worker could not remove (made after this job started)."""
        folder = self.outputFolder
        for leftover in folder.parent.glob(f".{folder.name}.partial-*"):
            if leftover.is_dir() and leftover.stat().st_mtime >= self.worker.startTime - 1.0:
                shutil.rmtree(leftover, ignore_errors=True)


class TrainingLogic:
    def __init__(self, workerPython: str | None = None):
        self.workerPython = workerPython or None

    def startExport(self, pairs, classMap: dict, outputFolder, sizes=(128, 192, 256), valFraction=0.1, seed=0,
                    backgroundChannel=True, overwrite=False, testFraction=0.15) -> ExportJob:
        """Writes the pairs into a private temporary folder and starts ``ivdseg export`` on them; returns at once.

        Args:
            pairs: CasePairs to export.
            classMap: output class name -> segment names that form it.
            outputFolder: the dataset folder to create (replaced only when complete, if ``overwrite``).
            valFraction, testFraction: shares of the patients in validation (choices) and test (reported only);
                a scene of one or two patients gets no test patient.

        Raises:
            ValueError: no pairs or classes, a bad fraction, a geometry mismatch, a file that could not be written.
        """
        if not pairs:
            raise ValueError("No (volume, segmentation) pairs to export; add segmentations of your volumes first.")
        if not classMap:
            raise ValueError("Give at least one segment a class name.")
        _checkFractions(valFraction, testFraction)
        return self._startExportWorker(lambda tmpdir: writePairs(pairs, classMap, tmpdir), outputFolder, sizes,
                                       valFraction, testFraction, seed, backgroundChannel, overwrite)

    def startRleExport(self, csvPath, imageFolder, outputFolder, overlapping=True, sizes=(128, 192, 256),
                       valFraction=0.1, seed=0, backgroundChannel=True, overwrite=False, testFraction=0.15) -> ExportJob:
        """Starts ``ivdseg export`` of an RLE mask table and its image folder (:mod:`IVDSegmentationLib.rletable`)
        in the worker; returns at once. Every class of the table is exported; patients are the table's cases, so
        the days of one case stay in one part of the split.

        Raises:
            ValueError: an unreadable table or one without classes, a missing image folder, a bad fraction.
        """
        from .rletable import rleTableSummary, writeRleSpec

        _checkFractions(valFraction, testFraction)
        tableClasses = list(rleTableSummary(csvPath)["classes"])
        return self._startExportWorker(
            lambda tmpdir: writeRleSpec(csvPath, imageFolder, tableClasses, tmpdir, overlapping), outputFolder, sizes,
            valFraction, testFraction, seed, backgroundChannel, overwrite)

    def _startExportWorker(self, writeSpec, outputFolder, sizes, valFraction, testFraction, seed, backgroundChannel,
                           overwrite) -> ExportJob:
        """``writeSpec(tmpdir)`` writes the export's input into a private temporary folder and returns its spec;
        then ``ivdseg export`` starts in the worker. The folder goes when the export is finished or fails here."""
        tmpdir = tempfile.mkdtemp(prefix="ivdseg-export-")  # 0700: the volumes are patient data
        try:
            spec = writeSpec(tmpdir)
            args = ["export", outputFolder, "--spec", spec, "--sizes", ",".join(str(int(s)) for s in sizes),
                    "--val-fraction", float(valFraction), "--test-fraction", float(testFraction), "--seed", int(seed),
                    "--progress", "jsonl"]
            if not backgroundChannel:
                args.append("--no-background-channel")
            if overwrite:
                args.append("--overwrite")
            worker = WorkerJob(args, python=self.workerPython)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        return ExportJob(worker, tmpdir, outputFolder)

    @staticmethod
    def finishExport(job: ExportJob):
        """The written dataset (DatasetInfo) of a finished export; always removes the job's temporary files.

        Raises:
            RuntimeError: the worker failed or was cancelled (one sentence); the dataset folder is as it was.
        """
        from ivdseg.data.dataset import open_dataset
        from ivdseg.errors import IvdsegError

        try:
            if not job.finished:
                raise RuntimeError("The export is still running.")
            if job.worker.cancelled:
                raise RuntimeError(f"Export cancelled; {job.outputFolder} is as it was.")
            if job.worker.returncode != 0:
                raise RuntimeError(job.worker.errorMessage())
            try:
                return open_dataset(job.outputFolder)
            except IvdsegError as exc:
                raise RuntimeError(str(exc)) from None
        finally:
            shutil.rmtree(job.tmpdir, ignore_errors=True)
            if job.worker.killed:
                job.removeLeftovers()

    def exportDataset(self, pairs, classMap: dict, outputFolder, timeout=None, progressCallback=None, **options):
        """Blocking export (scripts and tests): startExport, wait, finishExport. ``progressCallback`` receives
        each event dict."""
        job = self.startExport(pairs, classMap, outputFolder, **options)
        try:
            job.worker.wait(timeout=timeout, onEvent=progressCallback)
        finally:
            if not job.finished:
                job.cancel()
        return self.finishExport(job)

    def startTraining(self, datasetFolder, runFolder, network="unet2d", size=256, activation="relu", epochs=50,
                      batchSize=8, learningRate=1e-3, loss="dice_ce", name="my-model", extraArgs=(),
                      resume=False) -> WorkerJob:
        """Launches ``ivdseg train`` in the worker; epoch events arrive through job.poll(). ``resume`` continues the
        run in ``runFolder`` from its last checkpoint (see :func:`earlierRun`): the worker refuses, in one sentence,
        settings that differ from the run's in what its weights depend on (network, size, depth, filters...)."""
        args = ["train", datasetFolder, "-o", runFolder, "--network", network, "--size", int(size),
                "--activation", activation, "--epochs", int(epochs), "--batch-size", int(batchSize),
                "--learning-rate", float(learningRate), "--loss", loss, "--name", name, "--progress", "jsonl",
                *map(str, extraArgs), *(["--resume"] if resume else [])]
        return WorkerJob(args, python=self.workerPython)

    @staticmethod
    def stopTraining(job: WorkerJob):
        """Asks the worker to stop; it packages the best model so far, then ends (returns at once)."""
        job.requestStop()

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
