"""The Training section of IVDSegmentation: cases of the scene -> de-identified dataset -> a network trained in
the worker process -> a model package installed beside the others.

TrainingPanel is a plain object holding the section's widgets (in the module widget's ``ui``) and the module's
parameter node, whose ``training`` parameter pack keeps every choice: the bound widgets through their
SlicerParameterName ("training.<field>"), the two tables by hand (classMapJson: {segment name: class name}, an
empty class leaving the segment out; excludedSegmentations: the pairs the user unticked).

Both the export and the training run in the worker (IVDSegmentationLib.training), followed by one JobRunner: the
GUI thread only lists pairs (names, no voxels), writes the ticked pairs once when Export is pressed, and reads
events from a timer.
"""

import json
import logging
from pathlib import Path

import qt
import slicer
import vtk
from slicer.i18n import tr as _

from IVDSegmentationLib import dependencies, rletable, training
from IVDSegmentationLib.gui.jobrunner import JobRunner
from IVDSegmentationLib.logic import PACKAGE_NAME, SegmentationLogic

logger = logging.getLogger(__name__)

# Labels of the parameter pack's choices, in the order of its Choice lists (the GUI connector lists raw choices).
NETWORK_LABELS = {"unet2d": "U-Net 2D", "deeplabv3plus": "DeepLabV3+", "res_se_unet": "Res-SE-U-Net",
                  "efficientnet_b0_unet": "U-Net on EfficientNet-B0"}
ACTIVATION_LABELS = {"relu": "ReLU", "swish": "Swish", "mish": "Mish"}
LOSS_LABELS = {"dice": "Dice", "dice_ce": "Dice + cross-entropy"}
AUGMENTATION_LABELS = {"standard": "Standard", "scanner": "Standard + other scanners"}
SAMPLING_LABELS = {"slices": "Every slice alike", "sqrt": "Square root of each source's slices",
                   "equal": "Every source alike"}
SOURCE_LABELS = {"scene": "Volumes and segmentations of the scene", "rleTable": "RLE mask table and image folder"}
POLL_INTERVAL_MS = 250
BAR_STEPS_PER_EPOCH = 100


def _isUnset(path) -> bool:
    """An empty path line edit reads as Path("."), the parameter node's default for a path."""
    return str(path) in ("", ".")


def _relabel(comboBox, labels: dict) -> None:
    for index, choice in enumerate(labels):
        if comboBox.itemText(index) == choice:
            comboBox.setItemText(index, labels[choice])


def _number(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


class TrainingPanel:
    """The Training section: pairs and classes, Export/Cancel and Start/Stop, both run in the worker.

    Args:
        ui: the module widget's ui (slicer.util.childWidgetVariables), holding the section's widgets.
        onModelInstalled: called without arguments once a trained model is installed (refreshes the model list).
    """

    def __init__(self, ui, onModelInstalled=None) -> None:
        self.ui = ui
        self._onModelInstalled = onModelInstalled
        self._parameterNode = None
        self._observerTag = None
        self._pairs = []  # CasePairs, in the order of the cases table's rows
        self._segmentNames = []  # in the order of the class table's rows
        self._runner = JobRunner(POLL_INTERVAL_MS)
        self._mode = None  # "export" or "train" while the runner follows a job
        self._jobRunFolder, self._jobEpochs, self._epochsDone = None, 0, 0
        self._earlierEpochs = []  # epoch events of the run a resumed training continues
        self._stopRequested = self._aborted = self._chartShown = False
        self._lastLog = ""
        self._packagesChecked = set()  # "export", "train"
        self.setup()

    def setup(self) -> None:
        ui = self.ui
        ui.refreshCasesButton.connect("clicked(bool)", self.onRefreshButton)
        ui.casesTableWidget.connect("itemChanged(QTableWidgetItem*)", self._onCaseItemChanged)
        ui.classMapTableWidget.connect("itemChanged(QTableWidgetItem*)", self._onClassItemChanged)
        ui.exportButton.connect("clicked(bool)", self.onExport)
        ui.exportCancelButton.connect("clicked(bool)", self.onExportCancel)
        ui.trainButton.connect("clicked(bool)", self.onStartStop)
        ui.showTrainingLogButton.connect("clicked(bool)", self.onShowLog)
        ui.trainingCollapsibleButton.connect("contentsCollapsed(bool)", self._onCollapsed)
        ui.rleTablePathLineEdit.connect("currentPathChanged(QString)", self._updateRleSummary)
        self._rleSummary = None  # (path, summary dict or the reason it could not be read)
        ui.exportProgressBar.hide()
        ui.trainProgressBar.hide()

    def cleanup(self) -> None:
        self._runner.stop()  # Slicer quits or the module reloads: nobody is left to install the model
        if self._parameterNode is not None and self._observerTag is not None:
            self._parameterNode.RemoveObserver(self._observerTag)
        self._parameterNode = self._observerTag = None

    def setParameterNode(self, parameterNode) -> None:
        """Follows the module widget's parameter node (None while the scene closes; a job keeps running)."""
        if self._parameterNode is not None and self._observerTag is not None:
            self._parameterNode.RemoveObserver(self._observerTag)
        self._parameterNode, self._observerTag = parameterNode, None
        if parameterNode is None:
            self._fillTables([], [])  # the nodes of the pairs are going away
        else:
            self._observerTag = parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            base = Path.home() / "IVDSegmentation"
            pack = parameterNode.training
            if _isUnset(pack.datasetFolder):
                pack.datasetFolder = base / "dataset"
            if _isUnset(pack.runFolder):
                pack.runFolder = base / "run"
            self._updateRleSummary("" if _isUnset(pack.rleTable) else str(pack.rleTable))
            if not self.ui.trainingCollapsibleButton.collapsed:
                self.refreshPairs()
        self.updateGui()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateGui()

    def _onCollapsed(self, collapsed) -> None:
        if not collapsed:
            self.refreshPairs()

    # ------------------------------------------------------------------ GUI state
    @property
    def _exporting(self) -> bool:
        return self._mode == "export"

    @property
    def _training(self) -> bool:
        return self._mode == "train"

    def updateGui(self) -> None:
        ui = self.ui
        _relabel(ui.networkComboBox, NETWORK_LABELS)
        _relabel(ui.activationComboBox, ACTIVATION_LABELS)
        _relabel(ui.lossComboBox, LOSS_LABELS)
        _relabel(ui.augmentationComboBox, AUGMENTATION_LABELS)
        _relabel(ui.sourceSamplingComboBox, SAMPLING_LABELS)
        _relabel(ui.trainingSourceComboBox, SOURCE_LABELS)
        fromTable = self._fromTable
        for widget in (ui.casesLabel, ui.casesTableWidget, ui.refreshCasesButton, ui.classMapLabel,
                       ui.classMapTableWidget, ui.casesSummaryLabel):
            widget.visible = not fromTable
        ui.rleGroupBox.visible = fromTable
        self._syncTables()
        busy = self._runner.running
        for widget in (ui.casesTableWidget, ui.classMapTableWidget, ui.refreshCasesButton, ui.datasetFolderPathLineEdit,
                       ui.exportSize128CheckBox, ui.exportSize192CheckBox, ui.exportSize256CheckBox,
                       ui.valFractionSpinBox, ui.testFractionSpinBox, ui.seedSpinBox, ui.backgroundChannelCheckBox, ui.networkComboBox,
                       ui.trainSizeComboBox, ui.activationComboBox, ui.epochsSpinBox, ui.trainBatchSizeSpinBox,
                       ui.learningRateSpinBox, ui.lossComboBox, ui.contextSlicesSpinBox, ui.trainedModelNameLineEdit,
                       ui.baseFiltersSpinBox, ui.augmentationComboBox, ui.sourceSamplingComboBox, ui.halfWeightsCheckBox,
                       ui.runFolderPathLineEdit,
                       ui.trainingSourceComboBox, ui.rleGroupBox):
            widget.enabled = not busy

        exportProblem = self._exportProblem()
        ui.exportButton.enabled = not busy and not exportProblem
        ui.exportButton.toolTip = exportProblem or (
            _("Write the table's images and masks as a de-identified dataset.") if fromTable
            else _("Write the ticked cases as a de-identified dataset."))
        ui.exportCancelButton.enabled = self._exporting and not self._runner.job.worker.cancelled

        if self._training:
            ui.trainButton.text = _("Abort") if self._stopRequested else _("Stop")
            ui.trainButton.enabled = True
            ui.trainButton.toolTip = (_("End the worker now; no model is kept from this run.") if self._stopRequested
                                      else _("Stop training; the best model so far is packaged and installed."))
        else:
            trainProblem = self._trainProblem()
            ui.trainButton.text = _("Start training")
            ui.trainButton.enabled = not busy and not trainProblem
            ui.trainButton.toolTip = trainProblem or _("Train on the dataset folder in a background process.")
        ui.showTrainingLogButton.enabled = busy or bool(self._lastLog)

    def _exportProblem(self) -> str:
        """Why Export cannot run now, or ""."""
        p = self._parameterNode
        if p is None:
            return _("No scene.")
        if self._fromTable:
            if _isUnset(p.training.rleTable) or not Path(p.training.rleTable).is_file():
                return _("Choose the RLE table (a CSV file).")
            if _isUnset(p.training.rleImageFolder) or not Path(p.training.rleImageFolder).is_dir():
                return _("Choose the folder of the table's images.")
        elif not self._checkedPairs():
            return _("Tick at least one (image volume, segmentation) pair.")
        elif not self.classMap():
            return _("Give at least one segment a class name.")
        if _isUnset(p.training.datasetFolder):
            return _("Choose a dataset folder.")
        if not self._exportSizes():
            return _("Tick at least one size.")
        if p.training.valFraction + p.training.testFraction >= 1.0:
            return _("The validation and test fractions leave no patient for training; lower one of them.")
        return ""

    def _trainProblem(self) -> str:
        """Why Start training cannot run now, or ""."""
        p = self._parameterNode
        if p is None:
            return _("No scene.")
        pack = p.training
        if _isUnset(pack.datasetFolder) or not (Path(pack.datasetFolder) / "dataset.json").is_file():
            return _("The dataset folder holds no dataset yet: export one first.")
        if _isUnset(pack.runFolder):
            return _("Choose a run folder.")
        if not PACKAGE_NAME.fullmatch(pack.trainedModelName.strip()):
            return _("Name the model with letters, digits, '.', '_' or '-'.")
        return ""

    @property
    def _fromTable(self) -> bool:
        return self._parameterNode is not None and self._parameterNode.training.trainingSource == "rleTable"

    def _updateRleSummary(self, path="") -> None:
        """Reads the chosen table once (ids and classes, not the masks) and shows images, cases and, per class, the
        images with a mask and the empty ones."""
        label = self.ui.rleSummaryLabel
        if not path or not Path(path).is_file():
            label.text = _("Choose a CSV with the columns id, class, segmentation.") if not path else ""
            return
        try:
            with slicer.util.WaitCursor():
                label.text = rletable.summaryText(rletable.rleTableSummary(path))
        except ValueError as exc:
            label.text = str(exc)

    def _exportSizes(self) -> list:
        pack = self._parameterNode.training
        return [size for size, on in ((128, pack.exportSize128), (192, pack.exportSize192), (256, pack.exportSize256))
                if on]

    def _workerPython(self):
        return (self._parameterNode.workerPython if self._parameterNode is not None else "") or None

    # ------------------------------------------------------------------ cases and classes
    def onRefreshButton(self) -> None:
        self.refreshPairs()

    def refreshPairs(self) -> None:
        """Lists the (image volume, segmentation) pairs and the segment names of the scene, then the summary."""
        if self._parameterNode is None:
            return
        pairs = training.casePairsFromScene()
        self._fillTables(pairs, training.segmentNames(pairs))
        self._updateSummary()
        self.updateGui()

    def _fillTables(self, pairs, segmentNames) -> None:
        self._pairs, self._segmentNames = list(pairs), list(segmentNames)
        table = self.ui.casesTableWidget
        wasBlocked = table.blockSignals(True)
        table.setRowCount(len(self._pairs))
        for row, pair in enumerate(self._pairs):
            volumeItem = qt.QTableWidgetItem(pair.volumeNode.GetName())
            volumeItem.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
            volumeItem.setCheckState(qt.Qt.Checked)
            table.setItem(row, 0, volumeItem)
            segmentationItem = qt.QTableWidgetItem(pair.segmentationNode.GetName())
            segmentationItem.setFlags(qt.Qt.ItemIsEnabled)
            table.setItem(row, 1, segmentationItem)
        table.blockSignals(wasBlocked)
        table = self.ui.classMapTableWidget
        wasBlocked = table.blockSignals(True)
        table.setRowCount(len(self._segmentNames))
        for row, name in enumerate(self._segmentNames):
            segmentItem = qt.QTableWidgetItem(name)
            segmentItem.setFlags(qt.Qt.ItemIsEnabled)
            table.setItem(row, 0, segmentItem)
            table.setItem(row, 1, qt.QTableWidgetItem(name))
        table.blockSignals(wasBlocked)
        self._syncTables()

    def _syncTables(self) -> None:
        """Ticks and class names of the tables from the parameter node."""
        if self._parameterNode is None:
            return
        excluded = self._excludedIDs()
        table = self.ui.casesTableWidget
        wasBlocked = table.blockSignals(True)
        for row, pair in enumerate(self._pairs):
            state = qt.Qt.Unchecked if pair.segmentationNode.GetID() in excluded else qt.Qt.Checked
            item = table.item(row, 0)
            if item is not None and item.checkState() != state:
                item.setCheckState(state)
        table.blockSignals(wasBlocked)
        names = self._classNames()
        table = self.ui.classMapTableWidget
        wasBlocked = table.blockSignals(True)
        for row, segment in enumerate(self._segmentNames):
            item = table.item(row, 1)
            text = names.get(segment, segment)
            if item is not None and item.text() != text:
                item.setText(text)
        table.blockSignals(wasBlocked)

    def _excludedIDs(self) -> set:
        return {node.GetID() for node in self._parameterNode.training.excludedSegmentations if node is not None}

    def _classNames(self) -> dict:
        """{segment name: class name} saved in the parameter node (unreadable JSON counts as empty)."""
        try:
            names = json.loads(self._parameterNode.training.classMapJson or "{}")
        except ValueError:
            return {}
        return {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}

    def classMap(self) -> dict:
        """{class name: [segment names]} as TrainingLogic takes it; classes in the order of their first segment."""
        if self._parameterNode is None:
            return {}
        names = self._classNames()
        classMap = {}
        for segment in self._segmentNames:
            className = names.get(segment, segment).strip()
            if className:
                classMap.setdefault(className, []).append(segment)
        return classMap

    def _checkedPairs(self) -> list:
        if self._parameterNode is None:
            return []
        excluded = self._excludedIDs()
        return [pair for pair in self._pairs if pair.segmentationNode.GetID() not in excluded]

    def _onCaseItemChanged(self, item) -> None:
        p = self._parameterNode
        if p is None or item.column() != 0 or not 0 <= item.row() < len(self._pairs):
            return
        segmentationNode = self._pairs[item.row()].segmentationNode
        excluded = [node for node in p.training.excludedSegmentations
                    if node is not None and node.GetID() != segmentationNode.GetID()]
        if item.checkState() != qt.Qt.Checked:
            excluded.append(segmentationNode)
        p.training.excludedSegmentations = excluded
        self._updateSummary()

    def _onClassItemChanged(self, item) -> None:
        p = self._parameterNode
        if p is None or item.column() != 1 or not 0 <= item.row() < len(self._segmentNames):
            return
        names = self._classNames()
        names[self._segmentNames[item.row()]] = item.text().strip()
        p.training.classMapJson = json.dumps(names, sort_keys=True)
        self._updateSummary()

    def _updateSummary(self) -> None:
        label = self.ui.casesSummaryLabel
        pairs, classMap = self._checkedPairs(), self.classMap()
        if not self._pairs:
            label.text = _("No pairs in the scene. A segmentation whose reference geometry is an image volume forms "
                           "one: load or draw one, then Refresh.")
            return
        if not pairs or not classMap:
            label.text = self._exportProblem()
            return
        summary = training.summarize(pairs, classMap)
        perClass = ", ".join(f"{name} {count}" for name, count in summary["seriesPerClass"].items())
        label.text = _("{patients} patients, {series} series (series per class: {perClass}).").format(
            patients=summary["patients"], series=summary["series"], perClass=perClass)

    # ------------------------------------------------------------------ dependencies
    def _ensurePackages(self, forTraining: bool) -> bool:
        """Offers to install what the worker needs for the export (inference packages) or the training (TensorFlow
        as well); True when ready. With another Python set in Advanced, its packages are that environment's
        business: the missing ones are named and nothing is installed."""
        key = "train" if forTraining else "export"
        if key in self._packagesChecked:
            return True
        python = self._workerPython()
        missing = dependencies.missingInferencePackages(python)
        if forTraining:
            missing += dependencies.missingTrainingPackages(python)
        if missing and python:
            raise ValueError(_("The worker Python {python} lacks {packages}; install them there with pip.").format(
                python=python, packages=", ".join(missing)))
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                    _("{what} needs these Python packages, not installed yet:\n\n{packages}\n\n"
                      "Install them now? This takes a few minutes (TensorFlow alone is several hundred MB).").format(
                        what=_("Training") if forTraining else _("Export"), packages="\n".join(missing)),
                    windowTitle=_("Install training packages")):
                return False
            restart = dependencies.installInferencePackages()
            if forTraining:
                restart = dependencies.installTrainingPackages() or restart
            if restart:
                slicer.util.infoDisplay(_("The packages are installed. Restart Slicer, then try again."))
                return False
        self._packagesChecked.add(key)
        return True

    # ------------------------------------------------------------------ export
    def onExport(self) -> None:
        if self._parameterNode is None or self._runner.running:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not export the dataset."), waitCursor=True):
                self._startExport(self._parameterNode)
        except Exception as exc:  # noqa: BLE001 - tryWithErrorDisplay has shown it and re-raised; keep the slot quiet
            self.ui.trainingStatusLabel.text = str(exc)
        self.updateGui()

    def _datasetOverwrite(self, folder: Path):
        """The export's overwrite flag: False for a new folder, True for an empty one or for a dataset the user
        agrees to replace, None when they decline. A folder holding anything else is refused: overwriting
        replaces the whole folder."""
        if not folder.exists():
            return False
        if folder.is_dir() and not any(folder.iterdir()):
            return True
        if not (folder / "dataset.json").is_file():
            raise ValueError(_("{folder} holds other files than a dataset; choose an empty or a new folder.").format(
                folder=folder))
        if slicer.util.confirmOkCancelDisplay(_("{folder} already holds a dataset. Replace it?").format(folder=folder),
                                              windowTitle=_("Replace dataset")):
            return True
        return None

    def _startExport(self, p) -> None:
        if not self._ensurePackages(forTraining=False):
            return
        problem = self._exportProblem()
        if problem:
            raise ValueError(problem)
        pack = p.training
        folder = Path(pack.datasetFolder)
        overwrite = self._datasetOverwrite(folder)
        if overwrite is None:
            return
        folder.parent.mkdir(parents=True, exist_ok=True)  # the default folder's parent may not exist yet
        options = dict(sizes=self._exportSizes(), valFraction=pack.valFraction, testFraction=pack.testFraction,
                       seed=pack.seed, backgroundChannel=pack.backgroundChannel, overwrite=overwrite)
        logic = training.TrainingLogic(self._workerPython())
        if self._fromTable:
            job = logic.startRleExport(pack.rleTable, pack.rleImageFolder, folder, overlapping=pack.rleOverlapping,
                                       **options)
            total = 0  # the series (case-days) are counted by the worker: a busy bar
        else:
            job = logic.startExport(self._checkedPairs(), self.classMap(), folder, **options)
            total = len(self._checkedPairs())
        self._mode, self._lastLog = "export", ""
        bar = self.ui.exportProgressBar
        bar.setRange(0, total)
        bar.value = 0
        bar.setFormat(_("case %v/%m"))
        bar.show()
        self.ui.trainingStatusLabel.text = _("Exporting in the background...")
        self._runner.start(job, self._onExportEvent, self._finishExport)

    def _onExportEvent(self, event) -> None:
        if event.get("event") == "progress" and event.get("stage") == "export":
            self.ui.exportProgressBar.value = int(event["done"])
        elif event.get("event") in ("message", "warning"):
            self.ui.trainingStatusLabel.text = event.get("text") or event.get("message") or ""

    def _finishExport(self, job) -> None:
        self._mode, self._lastLog = None, job.worker.log
        self.ui.exportProgressBar.hide()
        try:
            info = training.TrainingLogic.finishExport(job)
            self.ui.trainingStatusLabel.text = _("Exported {cases} series of {patients} patients to {folder}.").format(
                cases=len(info.cases), patients=len({m["patient"] for m in info.cases.values()}), folder=info.root)
        except RuntimeError as exc:
            self.ui.trainingStatusLabel.text = str(exc)
            if not job.worker.cancelled:
                slicer.util.errorDisplay(_("The export failed: {reason}").format(reason=exc),
                                         windowTitle=_("Export failed"),
                                         **({"detailedText": self._lastLog} if self._lastLog else {}))
        finally:
            self.updateGui()

    def onExportCancel(self) -> None:
        if self._exporting:
            self._runner.cancel()
            self.ui.trainingStatusLabel.text = _("Cancelling the export...")
        self.updateGui()

    # ------------------------------------------------------------------ training
    def onStartStop(self) -> None:
        if self._training:
            self._stop()
            return
        if self._parameterNode is None or self._runner.running:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start the training."), waitCursor=True):
                self._start(self._parameterNode)
        except Exception as exc:  # noqa: BLE001 - tryWithErrorDisplay has shown it and re-raised
            self.ui.trainingStatusLabel.text = str(exc)
        self.updateGui()

    @staticmethod
    def _freeVersion(name: str) -> str:
        """The first version 1.0.N no installed model of this name has (installModel refuses a duplicate)."""
        taken = {model.version for model in SegmentationLogic().listModels() if model.name == name}
        n = 0
        while f"1.0.{n}" in taken:
            n += 1
        return f"1.0.{n}"

    def _start(self, p) -> None:
        if not self._ensurePackages(forTraining=True):
            return
        problem = self._trainProblem()
        if problem:
            raise ValueError(problem)
        pack = p.training
        name, runFolder = pack.trainedModelName.strip(), Path(pack.runFolder)
        extraArgs = ["--model-version", self._freeVersion(name), "--context-slices", int(pack.contextSlices),
                     "--base-filters", int(pack.baseFilters), "--augmentation", pack.augmentation,
                     "--source-sampling", pack.sourceSampling, "--weights", "float16" if pack.halfWeights else "float32"]
        earlier = training.earlierRun(runFolder)
        resume = False
        if earlier is not None:
            resume = self._askResume(runFolder, earlier)
            if resume is None:
                return
            if not resume:
                extraArgs.append("--overwrite")
        job = training.TrainingLogic(self._workerPython()).startTraining(
            str(pack.datasetFolder), str(runFolder), network=pack.network, size=pack.trainSize,
            activation=pack.activation, epochs=pack.epochs, batchSize=pack.trainBatchSize,
            learningRate=pack.learningRate, loss=pack.loss, name=name, extraArgs=extraArgs, resume=resume)
        self._mode = "train"
        self._earlierEpochs = earlier["epochs"] if resume else []  # the curves show the whole run
        self._jobRunFolder, self._jobEpochs = runFolder, pack.epochs
        self._epochsDone = earlier["epoch"] if resume else 0
        self._stopRequested = self._aborted = self._chartShown = False
        self._lastLog = ""
        bar = self.ui.trainProgressBar
        bar.setRange(0, 0)  # busy until the first batch
        bar.setFormat("%p%")
        bar.show()
        self.ui.trainingStatusLabel.text = _("Starting the worker and loading TensorFlow...")
        self._runner.start(job, self._onTrainingEvent, self._finishTraining)

    @staticmethod
    def _askResume(runFolder, earlier):
        """True to continue the earlier run in ``runFolder``, False to start afresh, None to do nothing."""
        if not earlier["resumable"]:
            ok = slicer.util.confirmOkCancelDisplay(
                _("{folder} holds an earlier run that cannot be continued. Start afresh? Its checkpoints are "
                  "deleted; models installed from it stay.").format(folder=runFolder), windowTitle=_("Start afresh"))
            return False if ok else None
        answer = slicer.util.messageBox(
            _("{folder} holds an earlier run, stopped after epoch {epoch}.\n\n"
              "Yes: continue it from there (with the network, size and classes it was started with).\n"
              "No: start afresh (its checkpoints are deleted; models installed from it stay).").format(
                folder=runFolder, epoch=earlier["epoch"]),
            windowTitle=_("Continue training"), icon=qt.QMessageBox.Question,
            standardButtons=qt.QMessageBox.Yes | qt.QMessageBox.No | qt.QMessageBox.Cancel)
        return True if answer == qt.QMessageBox.Yes else False if answer == qt.QMessageBox.No else None

    def _stop(self) -> None:
        job = self._runner.job
        if not self._stopRequested:
            # The stop file and the closed stdin reach python-real through PythonSlicer (which forwards no signal):
            # the worker leaves its epoch loop and packages the best model so far, which can take a minute.
            self._stopRequested = True
            training.TrainingLogic.stopTraining(job)
            self.ui.trainingStatusLabel.text = _("Stopping: the worker packages the best model so far...")
        elif slicer.util.confirmOkCancelDisplay(_("Abort the training now? No model is kept from this run."),
                                                windowTitle=_("Abort training")):
            self._aborted = True
            job.kill()
        self.updateGui()

    def _onTrainingEvent(self, event) -> None:
        kind = event.get("event")
        if kind == "epoch":
            self._showEpoch(event)
            self._updateCurves(self._runner.job)
        elif kind == "progress" and event.get("total"):
            self._showProgress(event)
        elif kind in ("message", "error", "warning"):
            self.ui.trainingStatusLabel.text = event.get("text") or event.get("message") or ""

    def _showEpoch(self, event) -> None:
        self._epochsDone = int(event["epoch"])
        self._jobEpochs = int(event.get("epochs") or self._jobEpochs)
        bar = self.ui.trainProgressBar
        bar.setRange(0, self._jobEpochs * BAR_STEPS_PER_EPOCH)
        bar.value = self._epochsDone * BAR_STEPS_PER_EPOCH
        bar.setFormat(_("epoch {epoch}/{epochs}").format(epoch=self._epochsDone, epochs=self._jobEpochs))
        self.ui.trainingStatusLabel.text = _(
            "Epoch {epoch}/{epochs}: loss {loss}, validation Dice {dice} (best {best}).").format(
            epoch=self._epochsDone, epochs=self._jobEpochs, loss=_number(event.get("loss")),
            dice=_number(event.get("val_dice")), best=_number(event.get("best_val_dice")))

    def _showProgress(self, event) -> None:
        bar, done, total = self.ui.trainProgressBar, int(event["done"]), int(event["total"])
        if event.get("stage") == "train":
            bar.setRange(0, self._jobEpochs * BAR_STEPS_PER_EPOCH)
            bar.value = self._epochsDone * BAR_STEPS_PER_EPOCH + BAR_STEPS_PER_EPOCH * done // total
            bar.setFormat(_("epoch {epoch}/{epochs}").format(epoch=self._epochsDone + 1, epochs=self._jobEpochs))
        else:  # e.g. the validation of the best model before packaging
            bar.setRange(0, total)
            bar.value = done
            bar.setFormat(f"{event.get('stage', '')} %v/%m")

    def _updateCurves(self, job) -> None:
        p = self._parameterNode
        if p is None:  # the scene is closing; the next epoch draws all curves again
            return
        chart = p.training.trainingChart
        series = chart.GetNthPlotSeriesNode(0) if chart is not None and chart.GetNumberOfPlotSeriesNodes() else None
        table = series.GetTableNode() if series is not None else None
        table, chart = training.TrainingLogic.updateCurves(self._earlierEpochs + job.events, table,
                                                           chart if table else None)
        if p.training.trainingChart is None or p.training.trainingChart.GetID() != chart.GetID():
            p.training.trainingChart = chart
        if not self._chartShown:  # once per run: the user may change the layout afterwards
            self._chartShown = True
            plots = getattr(slicer.modules, "plots", None)
            if plots is not None:
                plots.logic().ShowChartInLayout(chart)

    def _finishTraining(self, job) -> None:
        self._mode, runFolder = None, self._jobRunFolder
        self._lastLog = job.log
        self.ui.trainProgressBar.hide()
        try:
            if self._aborted:
                self.ui.trainingStatusLabel.text = _("Training aborted; no model was kept.")
                return
            try:
                package = training.TrainingLogic.packageOf(job, runFolder)
            except RuntimeError as exc:
                if self._stopRequested:
                    self.ui.trainingStatusLabel.text = _("Training stopped; no model was kept ({reason}).").format(
                        reason=exc)
                    return
                self.ui.trainingStatusLabel.text = _("Training failed: {reason}").format(reason=exc)
                logger.error("IVDSegmentation training worker log:\n%s", self._lastLog)
                slicer.util.errorDisplay(_("Training failed: {reason}").format(reason=exc),
                                         windowTitle=_("Training failed"),
                                         **({"detailedText": self._lastLog} if self._lastLog else {}))
                return
            try:
                with slicer.util.tryWithErrorDisplay(_("The training finished, but its model could not be installed."),
                                                     waitCursor=True):
                    info = SegmentationLogic().installModel(str(package))
            except Exception as exc:  # noqa: BLE001 - shown by tryWithErrorDisplay
                self.ui.trainingStatusLabel.text = _("{reason} The package is in {package}.").format(
                    reason=exc, package=package)
                return
            self._selectModel(info)
            done = next((e for e in reversed(job.events) if e.get("event") == "done"), {})
            epochs = _("stopped after epoch {n}") if done.get("stopped") else _("epochs: {n}")
            message = _("Trained {model} ({epochs}): validation Dice {dice}. It is installed and selected in the "
                        "Model section.").format(model=f"{info.name} {info.version}",
                                                 epochs=epochs.format(n=done.get("epochs_run", "?")),
                                                 dice=_number(info.validationDice))
            self.ui.trainingStatusLabel.text = message
            slicer.util.infoDisplay(message, windowTitle=_("Training finished"))
        finally:
            self.updateGui()

    def _selectModel(self, info) -> None:
        if self._parameterNode is not None:
            self._parameterNode.modelName = f"{info.name} {info.version}"  # the field's "<name> <version>" form
        if self._onModelInstalled is not None:
            self._onModelInstalled()

    def onShowLog(self) -> None:
        job = self._runner.job
        log = job.log if job is not None and self._training else self._lastLog
        slicer.util.infoDisplay(_("The training worker's log (its standard error) is under Show Details."),
                                windowTitle=_("Training log"), detailedText=log or _("(empty)"))
