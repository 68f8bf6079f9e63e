"""SegmentationLogic: everything the Segment panel does, usable without the GUI (and under pytest).

Raises ValueError / RuntimeError with one sentence; reports progress through callbacks or job events;
never shows a dialog.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_folder
from ivdseg.models.package import bundled_models_dirs, card_task, extract_package, read_card

from . import dependencies, nodes
from .worker import WorkerJob

# What a card's name and version may be: they become a folder name in the user's model folder.
PACKAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PACKAGE_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+-]{0,31}")


@dataclass
class ModelInfo:
    name: str
    version: str
    path: str
    classes: list
    inputSize: int
    validationDice: float | None
    description: str
    builtin: bool
    levels: bool = False  # its card names disc levels (segment --levels)
    correctable: bool = False  # its card names a keypoint model that moves the disc centres (Correct points)
    testDice: dict | None = None  # pooled Dice per class on the card's test patients (they chose nothing)
    testPatients: int | None = None
    heldOutDice: dict | None = None  # mean Dice per class over the card's leave-one-source-out folds

    @classmethod
    def fromPackage(cls, path: Path, builtin: bool) -> "ModelInfo":
        from ivdseg.inference.levels import level_support

        card = read_card(path)
        classes = [c["name"] for c in card["classes"]]
        validation = (card.get("validation") or {}).get("overall") or {}
        test = (card.get("test") or {}).get("overall") or {}
        return cls(name=card["name"], version=str(card["version"]), path=str(path), classes=classes,
                   inputSize=int(card["input_size"]), validationDice=validation.get("mean_dice"),
                   description=card.get("description", ""), builtin=builtin, levels=level_support(card) is not None,
                   correctable=bool(card.get("keypoint_model")),
                   testDice={c: test["dice"].get(c) for c in classes} if test.get("dice") else None,
                   testPatients=test.get("patients"), heldOutDice=_heldOutDice(card, classes))


def _heldOutDice(card: dict, classes: list) -> dict | None:
    """Mean Dice per class over a card's leave-one-source-out folds; a class a fold never learnt does not count."""
    from ivdseg.eval.crossval import summarize
    from ivdseg.models.card import crossval_sources

    crossval = card.get("crossval") or {}
    if crossval.get("by") != "source" or not crossval.get("folds"):
        return None
    overall = summarize(crossval["folds"], classes, crossval_sources(card))["overall"]
    return {name: overall[name]["mean"] for name in classes}


def _overlapping(modelPath) -> bool:
    """Whether the model's classes overlap; a card that does not read is the worker's to report."""
    try:
        return bool(read_card(modelPath).get("overlapping"))
    except IvdsegError:
        return False


class SegmentationJob:
    """A running segmentation: the worker plus what finishSegmentation needs to build the result."""

    def __init__(self, worker: WorkerJob, tmpdir: str, volumeNode, modelPath: str, levels=False):
        self.worker = worker
        self.tmpdir = tmpdir
        self.volumeNode = volumeNode
        self.modelPath = modelPath
        self.levels = levels

    def poll(self):
        return self.worker.poll()

    @property
    def finished(self):
        return self.worker.finished

    @property
    def returncode(self):
        return self.worker.returncode

    @property
    def log(self):
        return self.worker.log

    def cancel(self):
        """Asks the worker to stop and kills it after a short grace period; returns at once."""
        self.worker.cancel()

    def cleanup(self):
        shutil.rmtree(self.tmpdir, ignore_errors=True)


class SegmentationLogic:
    """Runs models on volume nodes through the worker and turns results into segmentation nodes.

    Args:
        workerPython: the Python that runs ``-m ivdseg`` (default: this one, i.e. PythonSlicer in Slicer);
            point it at another environment, e.g. one with a GPU build of TensorFlow.
    """

    def __init__(self, workerPython: str | None = None):
        self.workerPython = workerPython or None

    # ------------------------------------------------------------ models
    @staticmethod
    def userModelsDir() -> str:
        folder = os.environ.get("IVDSEG_USER_MODELS") or os.path.join(os.path.expanduser("~"), ".ivdseg", "models")
        os.makedirs(folder, exist_ok=True)
        return folder

    def listModels(self) -> list:
        """Bundled and user-installed segmentation models (packages whose card cannot be read are left out, and so
        are helpers such as the levels anchor, which another model's card names and runs, and keypoint models)."""
        found = []
        for folder, builtin in [*((d, True) for d in bundled_models_dirs()), (Path(self.userModelsDir()), False)]:
            if not folder.is_dir():
                continue
            for package in sorted(folder.iterdir()):
                if not package.name.startswith(".") and (package / "model.json").is_file():  # not a staging folder
                    try:
                        card = read_card(package)
                        if card.get("role") == "levels anchor" or card_task(card) != "segmentation":
                            continue
                        found.append(ModelInfo.fromPackage(package, builtin))
                    except IvdsegError:
                        continue
        return found

    def installModel(self, path: str) -> ModelInfo:
        """Copies a model package (.zip or folder) into the user model folder, checking its card first."""
        source = Path(path)
        try:
            card = read_card(source)
        except IvdsegError as exc:
            raise ValueError(str(exc)) from None
        name, version = str(card["name"]), str(card["version"])
        if not PACKAGE_NAME.fullmatch(name) or not PACKAGE_VERSION.fullmatch(version) or ".." in name + version:
            raise ValueError(f"The card of {source} names the model {name!r} version {version!r}; a name and a "
                             "version of letters, digits, '.', '_' or '-' are needed.")
        models = Path(self.userModelsDir()).resolve()
        target = models / f"{name}-{version}"
        if target.resolve().parent != models:
            raise ValueError(f"The card of {source} would install outside the model folder; refused.")
        if target.exists():
            raise ValueError(f"Model {card['name']} {card['version']} is already installed in {target}.")
        try:
            with atomic_folder(target) as staging, tempfile.TemporaryDirectory(dir=models, prefix=".unpack-") as unpacked:
                package = extract_package(source, Path(unpacked)) if source.suffix.lower() == ".zip" else source
                if not (package / "model.keras").is_file() and not (package / "model.onnx").is_file():
                    raise ValueError(f"{source} has neither model.keras nor model.onnx.")
                shutil.copytree(package, staging, dirs_exist_ok=True)
        except IvdsegError as exc:
            raise ValueError(str(exc)) from None
        return ModelInfo.fromPackage(target, builtin=False)

    # ------------------------------------------------------------ dependencies
    def missingInferencePackages(self) -> list:
        """pip requirements the worker's Python lacks for inference."""
        return dependencies.missingInferencePackages(self.workerPython)

    @staticmethod
    def installInferencePackages() -> bool:
        return dependencies.installInferencePackages()

    # ------------------------------------------------------------ segmentation
    def startSegmentation(self, volumeNode, modelPath: str, device="auto", batchSize=16,
                          backend="auto", levels=False) -> SegmentationJob:
        """Writes the volume to a temporary file and starts the worker; returns at once.

        With ``levels`` (for a model whose card names disc levels: ``ModelInfo.levels``), each disc becomes its
        own segment named by level, with the disc centres and the measurement table beside it.

        Raises:
            ValueError: no volume, a colour volume, or no model.
        """
        if volumeNode is None:
            raise ValueError("Select an input volume.")
        if not modelPath:
            raise ValueError("Select a model.")
        nodes.volumeFromNodeChecks(volumeNode)
        tmpdir = tempfile.mkdtemp(prefix="ivdseg-job-")
        try:
            nodes.writeVolumeNode(volumeNode, Path(tmpdir) / "input.nrrd")
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise
        args = ["segment", Path(tmpdir) / "input.nrrd", "-o", Path(tmpdir) / "labels.nrrd", "--model", modelPath,
                "--device", device, "--batch-size", int(batchSize), "--backend", backend, "--progress", "jsonl"]
        if levels:
            args += ["--levels", "--points", Path(tmpdir) / "discs.mrk.json", "--table", Path(tmpdir) / "discs.csv"]
        if _overlapping(modelPath):  # classes that overlap come back as bits, one segment each
            args.append("--label-bits")
        worker = WorkerJob(args, python=self.workerPython)
        return SegmentationJob(worker, tmpdir, volumeNode, modelPath, levels)

    def startPointCorrection(self, volumeNode, pointsNode, segmentationNode=None, modelPath: str = "",
                             onCorrected=None, onError=None):
        """Starts correcting ``pointsNode`` (the disc centres of a result) with the keypoint model that the
        segmentation model's card names (``keypoint_model``): a worker keeps it loaded on the volume, and after each
        drag the points the user did not place move; with ``segmentationNode``, the disc segments are renamed after
        the points. Returns the :class:`PointCorrection` (``undo()``); end it with :meth:`stopPointCorrection`.

        Raises:
            ValueError: no points, a model without a keypoint model, or a worker that does not start.
        """
        from IVDSegmentationLib.pointcorrection import KeypointServer, PointCorrection, renameSegmentsByPoints
        from ivdseg.models.package import resolve_model

        if volumeNode is None or pointsNode is None or pointsNode.GetNumberOfControlPoints() == 0:
            raise ValueError("Segment with Label levels first: the correction moves the disc centres it makes.")
        name = read_card(modelPath).get("keypoint_model") if modelPath else None
        if not name:
            raise ValueError("The model names no keypoint model, so its points cannot be corrected.")
        try:
            keypointModel = resolve_model(name)
            keypoints = read_card(keypointModel).get("keypoints") or []
        except IvdsegError as exc:
            raise ValueError(str(exc)) from None
        labels = {pointsNode.GetNthControlPointLabel(n) for n in range(pointsNode.GetNumberOfControlPoints())}
        if not labels & set(keypoints):
            raise ValueError(f"None of the points is named as the keypoint model's ({', '.join(keypoints)}): the discs "
                             "were numbered because the lumbosacral disc was not found, so there is no level to "
                             "correct.")
        self.stopPointCorrection()
        tmpdir = tempfile.mkdtemp(prefix="ivdseg-points-")
        try:
            nodes.writeVolumeNode(volumeNode, Path(tmpdir) / "input.nrrd")
            server = KeypointServer(Path(tmpdir) / "input.nrrd", keypointModel, python=self.workerPython)
        except BaseException:
            shutil.rmtree(tmpdir, ignore_errors=True)
            raise

        def corrected(moved, seconds):
            if segmentationNode is not None:
                renameSegmentsByPoints(segmentationNode, pointsNode)
            if onCorrected:
                onCorrected(moved, seconds)

        self._correction = PointCorrection(pointsNode, server, corrected, onError, known=server.labels)
        self._correctionResources = (server, tmpdir, lambda: segmentationNode is not None
                                     and renameSegmentsByPoints(segmentationNode, pointsNode))
        self._correction.start()
        return self._correction

    def undoPointCorrection(self) -> bool:
        """Puts the points back as before the last correction (and the segment names after them)."""
        correction = getattr(self, "_correction", None)
        if correction is None or not correction.undo():
            return False
        self._correctionResources[2]()
        return True

    def stopPointCorrection(self) -> None:
        """Ends the correction mode: no more observation, the worker closed, its temporary volume removed."""
        correction = getattr(self, "_correction", None)
        if correction is not None:
            correction.stop()
            server, tmpdir, _ = self._correctionResources
            server.close()
            shutil.rmtree(tmpdir, ignore_errors=True)
        self._correction = self._correctionResources = None

    def finishSegmentation(self, job: SegmentationJob):
        """Turns a finished job into a segmentation node; always removes the job's temporary files.

        Raises:
            RuntimeError: the worker failed or was cancelled (one sentence; ``job.log`` has details).
        """
        try:
            if not job.finished:
                raise RuntimeError("The segmentation is still running.")
            if job.worker.cancelled:
                raise RuntimeError("Segmentation was cancelled; the scene is unchanged.")
            if job.returncode != 0:
                raise RuntimeError(job.worker.errorMessage())
            labels = nodes.readLabelArray(Path(job.tmpdir) / "labels.nrrd", job.volumeNode)
            card = read_card(job.modelPath)
            if job.levels:  # one class per disc, as the worker's sidecar names them
                sidecar = json.loads((Path(job.tmpdir) / "labels.nrrd.json").read_text(encoding="utf-8"))
                card = {**card, "classes": sidecar["labels"]}
            node = nodes.segmentationFromLabelmap(labels, job.volumeNode, card)
            if job.levels:
                nodes.discPointsFromFile(Path(job.tmpdir) / "discs.mrk.json", job.volumeNode, card["name"])
                nodes.discTableFromFile(Path(job.tmpdir) / "discs.csv", job.volumeNode, card["name"])
            else:
                nodes.removeResultNodes(job.volumeNode, card["name"])
            return node
        finally:
            job.cleanup()

    def segment(self, volumeNode, modelPath: str, device="auto", batchSize=16, progressCallback=None,
                backend="auto", timeout=None, idle=None, levels=False):
        """Blocking segmentation (for scripts and tests); progressCallback receives each event dict, ``idle`` is
        called between polls (e.g. to process GUI events; default: a short sleep)."""
        job = self.startSegmentation(volumeNode, modelPath, device, batchSize, backend, levels)
        try:
            job.worker.wait(timeout=timeout, onEvent=progressCallback, idle=idle)
        except BaseException:
            job.cancel()
            job.worker.wait()
            job.cleanup()
            raise
        return self.finishSegmentation(job)

    # ------------------------------------------------------------ DICOM
    @staticmethod
    def loadDicomSeries(seriesUID: str):
        """Loads a series of Slicer's DICOM database by its SeriesInstanceUID (inside Slicer)."""
        from . import dicomdb

        return dicomdb.loadSeriesByUID(seriesUID)

    @staticmethod
    def loadDicomFolder(folder: str, seriesUID: str | None = None):
        """Reads a DICOM folder with pydicom into a new scalar volume node (works without Slicer's DICOM module)."""
        from . import dicomdb

        return dicomdb.loadSeriesFromFolder(folder, seriesUID)


def cardSummary(info: ModelInfo) -> str:
    """One line for the model selector: classes, input size and the Dice that can be trusted: on the card's test
    patients (who chose nothing) and on sources left out of training, else on the validation patients, said so
    (they chose the checkpoint, so the figure flatters)."""
    def figures(dice: dict) -> str:
        return " / ".join("n/a" if dice.get(c) is None else f"{dice[c]:.3f}" for c in info.classes)

    parts = [", ".join(info.classes), f"input {info.inputSize} px"]
    if info.testDice:
        parts.append(f"test Dice {figures(info.testDice)} ({info.testPatients} patients who chose nothing)")
    if info.heldOutDice and any(v is not None for v in info.heldOutDice.values()):
        parts.append(f"on a source left out of training {figures(info.heldOutDice)}")
    if not info.testDice:
        dice = f"{info.validationDice:.3f}" if info.validationDice is not None else "n/a"
        parts.append(f"validation Dice {dice} (the patients that chose the checkpoint; no test figure)")
    return "; ".join(parts)


def modelKey(info: ModelInfo) -> str:
    """What the parameter node stores to name a model package: its name and version."""
    return f"{info.name} {info.version}"


def findModel(models, modelName: str):
    """The package of ``models`` named "<name> <version>" (or just "<name>": the first listed), or None."""
    if not modelName:
        return None
    exact = [m for m in models if modelKey(m) == modelName]
    return (exact or [m for m in models if m.name == modelName] or [None])[0]
