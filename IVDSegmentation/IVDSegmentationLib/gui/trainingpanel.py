"""The Training section of IVDSegmentation: cases of the scene -> de-identified dataset -> a network trained in
the worker process -> a model package installed beside the others.

TrainingPanel is a plain object holding the section's widgets (in the module widget's ``ui``) and the module's
parameter node; it lives here so that IVDSegmentation.py stays thin. Every choice is kept in the parameter node:
the bound widgets through their SlicerParameterName, the two tables by hand (classMapJson: {segment name: class
name}, an empty class leaving the segment out; excludedSegmentations: the pairs the user unticked).

IVDSegmentationLib.training is imported on first use: through the dataset export it needs OpenCV, an inference
package a fresh Slicer lacks, and the module must load without it.
"""

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import qt
import slicer
import vtk
from IVDSegmentationLib import dependencies
from IVDSegmentationLib.logic import SegmentationLogic
from slicer.i18n import tr as _

logger = logging.getLogger(__name__)

# Labels of the parameter node's choices, in the order of its Choice lists (the GUI connector lists raw choices).
NETWORK_LABELS = {"unet2d": "U-Net 2D", "deeplabv3plus": "DeepLabV3+", "res_se_unet": "Res-SE-U-Net"}
ACTIVATION_LABELS = {"relu": "ReLU", "swish": "Swish", "mish": "Mish"}
LOSS_LABELS = {"dice": "Dice", "dice_ce": "Dice + cross-entropy"}
POLL_INTERVAL_MS = 250
BAR_STEPS_PER_EPOCH = 100
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # it becomes a folder name in the model folder


def _trainingLib():
    """IVDSegmentationLib.training, or ValueError saying which package is missing."""
    try:
        from IVDSegmentationLib import training
    except ImportError as exc:
        raise ValueError(_("The Training section needs the Python package {name}, not installed yet; "
                           "press Refresh to install it.").format(name=exc.name)) from None
    return training


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
    """The Training section: pairs and classes, Export (in Slicer, with Cancel), Start/Stop (in the worker).

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
        self._exporting = self._exportCancelRequested = False
        self._job = None  # the running training (a WorkerJob), polled by _timer
        self._jobRunFolder, self._jobEpochs, self._epochsDone = None, 0, 0
        self._stopRequested = self._aborted = self._chartShown = False
        self._lastLog = ""
        self._packagesChecked = set()  # "export", "train"
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)
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
        ui.exportProgressBar.hide()
        ui.trainProgressBar.hide()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:  # Slicer quits or the module reloads: nobody is left to install the model
            self._job.cancel()
            self._job = None
        if self._parameterNode is not None and self._observerTag is not None:
            self._parameterNode.RemoveObserver(self._observerTag)
        self._parameterNode = self._observerTag = None

    def setParameterNode(self, parameterNode) -> None:
        """Follows the module widget's parameter node (None while the scene closes; a training keeps running)."""
        if self._parameterNode is not None and self._observerTag is not None:
            self._parameterNode.RemoveObserver(self._observerTag)
        self._parameterNode, self._observerTag = parameterNode, None
        if parameterNode is None:
            self._fillTables([], [])  # the nodes of the pairs are going away
        else:
            self._observerTag = parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            base = Path.home() / "IVDSegmentation"
            if _isUnset(parameterNode.datasetFolder):
                parameterNode.datasetFolder = base / "dataset"
            if _isUnset(parameterNode.runFolder):
                parameterNode.runFolder = base / "run"
            if not self.ui.trainingCollapsibleButton.collapsed:
                self.refreshPairs()
        self.updateGui()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateGui()

    def _onCollapsed(self, collapsed) -> None:
        if not collapsed:
            self.refreshPairs()

    # ------------------------------------------------------------------ GUI state
    def updateGui(self) -> None:
        ui = self.ui
        _relabel(ui.networkComboBox, NETWORK_LABELS)
        _relabel(ui.activationComboBox, ACTIVATION_LABELS)
        _relabel(ui.lossComboBox, LOSS_LABELS)
        self._syncTables()
        running = self._job is not None
        busy = self._exporting or running
        for widget in (ui.casesTableWidget, ui.classMapTableWidget, ui.refreshCasesButton, ui.datasetFolderPathLineEdit,
                       ui.exportSize128CheckBox, ui.exportSize192CheckBox, ui.exportSize256CheckBox,
                       ui.valFractionSpinBox, ui.seedSpinBox, ui.backgroundChannelCheckBox, ui.networkComboBox,
                       ui.trainSizeComboBox, ui.activationComboBox, ui.epochsSpinBox, ui.trainBatchSizeSpinBox,
                       ui.learningRateSpinBox, ui.lossComboBox, ui.trainedModelNameLineEdit, ui.runFolderPathLineEdit):
            widget.enabled = not busy

        exportProblem = self._exportProblem()
        ui.exportButton.enabled = not busy and not exportProblem
        ui.exportButton.toolTip = exportProblem or _("Write the ticked cases as a de-identified dataset.")
        ui.exportCancelButton.enabled = self._exporting and not self._exportCancelRequested

        if running:
            ui.trainButton.text = _("Abort") if self._stopRequested else _("Stop")
            ui.trainButton.enabled = True
            ui.trainButton.toolTip = (_("End the worker now; no model is kept from this run.") if self._stopRequested
                                      else _("Stop training; the best model so far is packaged and installed."))
        else:
            trainProblem = self._trainProblem()
            ui.trainButton.text = _("Start training")
            ui.trainButton.enabled = not self._exporting and not trainProblem
            ui.trainButton.toolTip = trainProblem or _("Train on the dataset folder in a background process.")
        ui.showTrainingLogButton.enabled = running or bool(self._lastLog)

    def _exportProblem(self) -> str:
        """Why Export cannot run now, or ""."""
        p = self._parameterNode
        if p is None:
            return _("No scene.")
        if not self._checkedPairs():
            return _("Tick at least one (image volume, segmentation) pair.")
        if not self.classMap():
            return _("Give at least one segment a class name.")
        if _isUnset(p.datasetFolder):
            return _("Choose a dataset folder.")
        if not self._exportSizes():
            return _("Tick at least one size.")
        return ""

    def _trainProblem(self) -> str:
        """Why Start training cannot run now, or ""."""
        p = self._parameterNode
        if p is None:
            return _("No scene.")
        if _isUnset(p.datasetFolder) or not (Path(p.datasetFolder) / "dataset.json").is_file():
            return _("The dataset folder holds no dataset yet: export one first.")
        if _isUnset(p.runFolder):
            return _("Choose a run folder.")
        if not MODEL_NAME.fullmatch(p.trainedModelName.strip()):
            return _("Name the model with letters, digits, '.', '_' or '-'.")
        return ""

    def _exportSizes(self) -> list:
        p = self._parameterNode
        return [size for size, on in ((128, p.exportSize128), (192, p.exportSize192), (256, p.exportSize256)) if on]

    def _workerPython(self):
        return (self._parameterNode.workerPython if self._parameterNode is not None else "") or None

    # ------------------------------------------------------------------ cases and classes
    def onRefreshButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not install the packages."), waitCursor=True):
            if self._ensurePackages(forTraining=False):
                self.refreshPairs()

    def refreshPairs(self) -> None:
        """Lists the (image volume, segmentation) pairs and the segment names of the scene, then the summary."""
        if self._parameterNode is None:
            return
        try:
            training = _trainingLib()
        except ValueError as exc:
            self._fillTables([], [])
            self.ui.casesSummaryLabel.text = str(exc)
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
        return {node.GetID() for node in self._parameterNode.excludedSegmentations if node is not None}

    def _classNames(self) -> dict:
        """{segment name: class name} saved in the parameter node (unreadable JSON counts as empty)."""
        try:
            names = json.loads(self._parameterNode.classMapJson or "{}")
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
        excluded = [node for node in p.excludedSegmentations
                    if node is not None and node.GetID() != segmentationNode.GetID()]
        if item.checkState() != qt.Qt.Checked:
            excluded.append(segmentationNode)
        p.excludedSegmentations = excluded
        self._updateSummary()

    def _onClassItemChanged(self, item) -> None:
        p = self._parameterNode
        if p is None or item.column() != 1 or not 0 <= item.row() < len(self._segmentNames):
            return
        names = self._classNames()
        names[self._segmentNames[item.row()]] = item.text().strip()
        p.classMapJson = json.dumps(names, sort_keys=True)
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
        try:
            summary = _trainingLib().summarize(pairs, classMap, list(classMap))
        except ValueError as exc:
            label.text = str(exc)
            return
        perClass = ", ".join(f"{name} {count}" for name, count in summary["slicesPerClass"].items())
        label.text = _("{patients} patients, {series} series, {slices} labelled slices (per class: {perClass}).").format(
            patients=summary["patients"], series=summary["series"], slices=summary["labelledSlices"],
            perClass=perClass)

    # ------------------------------------------------------------------ dependencies
    def _ensurePackages(self, forTraining: bool) -> bool:
        """Offers to install what export (OpenCV in Slicer's Python) or training (TensorFlow) needs; True when ready.

        Export runs in Slicer's Python. Training runs in the worker: with another Python set in Advanced, its
        packages are that environment's business and the worker's error names what it lacks.
        """
        key = "train" if forTraining else "export"
        if key in self._packagesChecked:
            return True
        inference = dependencies.missingInferencePackages()
        training = dependencies.missingTrainingPackages() if forTraining and not self._workerPython() else []
        if inference or training:
            if not slicer.util.confirmOkCancelDisplay(
                    _("{what} needs these Python packages, not installed yet:\n\n{packages}\n\n"
                      "Install them now? This takes a few minutes (TensorFlow alone is several hundred MB).").format(
                        what=_("Training") if forTraining else _("Export"), packages="\n".join(inference + training)),
                    windowTitle=_("Install training packages")):
                return False
            restart = dependencies.installInferencePackages() if inference else False
            if training:
                restart = dependencies.installTrainingPackages() or restart
            if restart:
                slicer.util.infoDisplay(_("The packages are installed. Restart Slicer, then try again."))
                return False
        self._packagesChecked.add(key)
        return True

    # ------------------------------------------------------------------ export
    def onExport(self) -> None:
        if self._parameterNode is None or self._exporting or self._job is not None:
            return
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not export the dataset.")):
                info = self._exportDataset(self._parameterNode)
        except Exception as exc:  # noqa: BLE001 - tryWithErrorDisplay has shown it and re-raised; keep the slot quiet
            self.ui.trainingStatusLabel.text = str(exc)
            return
        if info is not None:
            self.ui.trainingStatusLabel.text = _("Exported {cases} series to {folder}.").format(
                cases=len(info.cases), folder=info.root)
        self.updateGui()

    def _datasetOverwrite(self, folder: Path):
        """exportDataset's overwrite flag: False for a new folder, True for an empty one or for a dataset the user
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

    def _exportDataset(self, p):
        """The exported DatasetInfo, or None when the user declined or cancelled."""
        if not self._ensurePackages(forTraining=False):
            return None
        training = _trainingLib()
        problem = self._exportProblem()
        if problem:
            raise ValueError(problem)
        folder = Path(p.datasetFolder)
        overwrite = self._datasetOverwrite(folder)
        if overwrite is None:
            return None
        folder.parent.mkdir(parents=True, exist_ok=True)  # the default folder's parent may not exist yet
        self._exporting, self._exportCancelRequested = True, False
        bar = self.ui.exportProgressBar
        bar.setRange(0, 0)  # busy until the first case is written
        bar.show()
        self.ui.trainingStatusLabel.text = _("Exporting...")
        self.updateGui()
        slicer.app.processEvents()
        try:
            return training.TrainingLogic().exportDataset(
                self._checkedPairs(), self.classMap(), folder, sizes=self._exportSizes(), valFraction=p.valFraction,
                seed=p.seed, backgroundChannel=p.backgroundChannel, overwrite=overwrite,
                progressCallback=self._onExportProgress, cancelRequested=lambda: self._exportCancelRequested)
        except training.ExportCancelled:
            self.ui.trainingStatusLabel.text = _("Export cancelled; {folder} is as it was.").format(folder=folder)
            return None
        finally:
            self._exporting = False
            bar.hide()
            self.updateGui()

    def _onExportProgress(self, done, total) -> None:
        bar = self.ui.exportProgressBar
        bar.setRange(0, total)
        bar.value = done
        bar.setFormat(_("case %v/%m"))
        slicer.app.processEvents()  # lets the Cancel button be pressed

    def onExportCancel(self) -> None:
        self._exportCancelRequested = True
        self.ui.trainingStatusLabel.text = _("Cancelling the export...")
        self.updateGui()

    # ------------------------------------------------------------------ training
    def onStartStop(self) -> None:
        if self._job is not None:
            self._stop()
            return
        if self._parameterNode is None or self._exporting:
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
        training = _trainingLib()
        problem = self._trainProblem()
        if problem:
            raise ValueError(problem)
        name, runFolder = p.trainedModelName.strip(), Path(p.runFolder)
        extraArgs = ["--model-version", self._freeVersion(name)]
        checkpoints = runFolder / "checkpoints"
        if checkpoints.is_dir() and any(checkpoints.iterdir()):
            if not slicer.util.confirmOkCancelDisplay(
                    _("{folder} holds an earlier run. Start afresh? Its checkpoints are deleted; "
                      "models installed from it stay.").format(folder=runFolder), windowTitle=_("Start afresh")):
                return
            extraArgs.append("--overwrite")
        self._job = training.TrainingLogic(self._workerPython()).startTraining(
            str(p.datasetFolder), str(runFolder), network=p.network, size=p.trainSize, activation=p.activation,
            epochs=p.epochs, batchSize=p.trainBatchSize, learningRate=p.learningRate, loss=p.loss, name=name,
            extraArgs=extraArgs)
        self._jobRunFolder, self._jobEpochs, self._epochsDone = runFolder, p.epochs, 0
        self._stopRequested = self._aborted = self._chartShown = False
        self._lastLog = ""
        bar = self.ui.trainProgressBar
        bar.setRange(0, 0)  # busy until the first batch
        bar.setFormat("%p%")
        bar.show()
        self.ui.trainingStatusLabel.text = _("Starting the worker and loading TensorFlow...")
        self._timer.start()

    def _stop(self) -> None:
        job = self._job
        if not self._stopRequested:
            # SIGTERM (Popen.terminate): the worker leaves its epoch loop and packages the best model so far, which
            # can take a minute. Not TrainingLogic.stopTraining: its cancel() blocks for the grace period, then
            # kills the worker, packaging included. On Windows terminate() ends the worker at once.
            self._stopRequested = True
            job.process.terminate()
            self.ui.trainingStatusLabel.text = _("Stopping: the worker packages the best model so far...")
        elif slicer.util.confirmOkCancelDisplay(_("Abort the training now? No model is kept from this run."),
                                                windowTitle=_("Abort training")):
            self._aborted = True
            job.cancel()
        self.updateGui()

    def onTimer(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        finished = job.finished  # read before polling: once True, every event is in the queue
        epochArrived = False
        for event in job.poll():
            kind = event.get("event")
            if kind == "epoch":
                epochArrived = True
                self._showEpoch(event)
            elif kind == "progress" and event.get("total"):
                self._showProgress(event)
            elif kind in ("message", "error"):
                self.ui.trainingStatusLabel.text = event.get("text") or event.get("message") or ""
        if epochArrived:
            self._updateCurves(job)
        if finished:
            self._timer.stop()
            self._finishTraining(job)

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
        chart = p.trainingChart
        series = chart.GetNthPlotSeriesNode(0) if chart is not None and chart.GetNumberOfPlotSeriesNodes() else None
        table = series.GetTableNode() if series is not None else None
        table, chart = _trainingLib().TrainingLogic.updateCurves(job.events, table, chart if table else None)
        if p.trainingChart is None or p.trainingChart.GetID() != chart.GetID():
            p.trainingChart = chart
        if not self._chartShown:  # once per run: the user may change the layout afterwards
            self._chartShown = True
            plots = getattr(slicer.modules, "plots", None)
            if plots is not None:
                plots.logic().ShowChartInLayout(chart)

    def _finishTraining(self, job) -> None:
        self._job, runFolder = None, self._jobRunFolder
        self._lastLog = job.log
        self.ui.trainProgressBar.hide()
        try:
            if self._aborted:
                self.ui.trainingStatusLabel.text = _("Training aborted; no model was kept.")
                return
            try:
                package = _trainingLib().TrainingLogic.packageOf(job, runFolder)
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
        log = self._job.log if self._job is not None else self._lastLog
        slicer.util.infoDisplay(_("The training worker's log (its standard error) is under Show Details."),
                                windowTitle=_("Training log"), detailedText=log or _("(empty)"))


def runTrainingScenario(testCase, widget=None, timeout=900):
    """Self-test: two synthetic cases of the scene exported, one epoch of a small U-Net (64 px) trained in the
    worker, its curves in a chart, the package installed and listed. Skips when training packages are missing.

    Args:
        testCase: a unittest.TestCase (IVDSegmentationTest).
        widget: the module widget; when given, its Training section must list the cases and their segment.
    """
    missing = dependencies.missingTrainingPackages() + dependencies.missingInferencePackages()
    if missing:
        testCase.skipTest("training packages are not installed (" + ", ".join(missing)
                          + "); install them from the Training section, then run the test again")
    import numpy as np
    from IVDSegmentationLib import scenarios, training

    volumes = []
    for index in range(2):  # two node names: two patients, so the split has a validation patient
        volumeNode, truth = scenarios.addPhantomVolume(f"Training case {index}")
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"Training case {index} discs")
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        segmentId = segmentationNode.GetSegmentation().AddEmptySegment("disc", "disc")
        slicer.util.updateSegmentBinaryLabelmapFromArray((truth > 0).astype(np.uint8), segmentationNode, segmentId,
                                                         volumeNode)
        volumes.append(volumeNode.GetID())
    pairs = [pair for pair in training.casePairsFromScene() if pair.volumeNode.GetID() in volumes]
    testCase.assertEqual(len(pairs), 2)
    classMap = {"intervertebral disc": ["disc"]}
    summary = training.summarize(pairs, classMap, list(classMap))
    testCase.assertEqual((summary["patients"], summary["series"]), (2, 2))
    testCase.assertGreater(summary["labelledSlices"], 0)
    if widget is not None:
        widget.initializeParameterNode()
        widget.trainingPanel.refreshPairs()
        testCase.assertGreaterEqual(widget.ui.casesTableWidget.rowCount, 2)
        testCase.assertEqual(widget.ui.classMapTableWidget.item(0, 0).text(), "disc")

    workDir = Path(tempfile.mkdtemp(prefix="ivdseg-training-test-"))
    userModels = os.environ.get("IVDSEG_USER_MODELS")
    os.environ["IVDSEG_USER_MODELS"] = str(workDir / "models")  # keep the user's model folder untouched
    try:
        logic = training.TrainingLogic()
        info = logic.exportDataset(pairs, classMap, workDir / "dataset", sizes=(64,), valFraction=0.5, seed=0)
        testCase.assertEqual(len(info.cases), 2)
        job = logic.startTraining(workDir / "dataset", workDir / "run", size=64, epochs=1, batchSize=4,
                                  name="training-panel-test", extraArgs=["--depth", "3", "--base-filters", "8"])
        testCase.assertEqual(job.wait(timeout=timeout), 0, job.errorMessage() + "\n" + job.log[-4000:])
        table, chart = logic.updateCurves(job.events)
        testCase.assertEqual(table.GetNumberOfRows(), 1)
        testCase.assertEqual(chart.GetNumberOfPlotSeriesNodes(), 2)
        installed = SegmentationLogic().installModel(str(logic.packageOf(job, workDir / "run")))
        testCase.assertIsNotNone(installed.validationDice)
        listed = [(m.name, m.version) for m in SegmentationLogic().listModels()]
        testCase.assertIn(("training-panel-test", installed.version), listed)
    finally:
        if userModels is None:
            os.environ.pop("IVDSEG_USER_MODELS", None)
        else:
            os.environ["IVDSEG_USER_MODELS"] = userModels
        shutil.rmtree(workDir, ignore_errors=True)
