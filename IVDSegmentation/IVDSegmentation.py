"""IVDSegmentation: the Slicer module (GUI, parameter node, logic shell and self-test).

The work happens in IVDSegmentationLib (Slicer side, no Qt) and in a worker process running the
ivdseg core; this file never imports TensorFlow or ONNX Runtime, so the module loads without them.
"""

import contextlib
import logging
import os
import pathlib
import time
from typing import Annotated

import qt
import slicer
import vtk
from IVDSegmentationLib.gui.correctionpanel import CorrectionPanel
from IVDSegmentationLib.gui.dicomdialog import chooseDicomSeries
from IVDSegmentationLib.gui.jobrunner import JobRunner
from IVDSegmentationLib.gui.trainingpanel import TrainingPanel
from IVDSegmentationLib.gui.views import showDiscTable
from IVDSegmentationLib.logic import SegmentationLogic, cardSummary, findModel, modelKey
from IVDSegmentationLib.terminology import ensureTerminologyContext
from slicer import vtkMRMLPlotChartNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper, parameterPack
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

logger = logging.getLogger(__name__)

DEVICE_LABELS = {"auto": "Auto", "gpu": "GPU", "cpu": "CPU"}
POLL_INTERVAL_MS = 100


class IVDSegmentation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("IVD Segmentation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["IVDSegmentation contributors"]
        self.parent.helpText = _("""Segments intervertebral discs in sagittal spine MRI with 2D networks run slice by
slice in a background process, so Slicer stays responsive and Cancel stops the work at once. Pick a volume (or a
series of the DICOM database), a model package and a device, then Apply: the result is a segmentation with one
segment per class of the model, placed beside the volume in the Data module. See the
<a href="https://github.com/ivdseg/SlicerIVDSegmentation#readme">README</a> for installation, the command line,
model packages and training.""")
        self.parent.acknowledgementText = _("""Built on 3D Slicer's scripted module template and parameter node
wrapper. The model card of each package lists the data sets it was trained on, with licences and citations.""")
        # Slicer's terminology lists lack intervertebral disc: load the extension's context once Slicer is up.
        slicer.app.connect("startupCompleted()", self.loadTerminology)

    @staticmethod
    def loadTerminology():
        try:
            ensureTerminologyContext(slicer.modules.terminologies.logic())
        except RuntimeError as exc:
            logger.warning("IVDSegmentation: %s", exc)


@parameterPack
class TrainingParameters:
    """The Training section's state (IVDSegmentationLib.gui.trainingpanel); widgets bind as "training.<field>".

    trainingSource - scene pairs or an RLE table (rleTable, rleImageFolder, rleOverlapping); excludedSegmentations -
    the pairs the user unticked; classMapJson - {segment name: class name}; contextSlices - 2.5D neighbours;
    sourceSampling - how batches draw on the sources; halfWeights - the package stores float16 weights."""

    trainingSource: Annotated[str, Choice(["scene", "rleTable"])] = "scene"
    rleTable: pathlib.Path
    rleImageFolder: pathlib.Path
    rleOverlapping: bool = True
    excludedSegmentations: list[vtkMRMLSegmentationNode]
    classMapJson: str = ""
    datasetFolder: pathlib.Path
    exportSize128: bool = False
    exportSize192: bool = False
    exportSize256: bool = True
    valFraction: Annotated[float, WithinRange(0.01, 0.9)] = 0.1
    testFraction: Annotated[float, WithinRange(0.0, 0.5)] = 0.15
    seed: Annotated[int, WithinRange(0, 1000000)] = 0
    backgroundChannel: bool = True
    network: Annotated[str, Choice(["unet2d", "deeplabv3plus", "res_se_unet", "efficientnet_b0_unet"])] = "unet2d"
    trainSize: Annotated[int, Choice([128, 192, 256])] = 256
    activation: Annotated[str, Choice(["relu", "swish", "mish"])] = "relu"
    epochs: Annotated[int, WithinRange(1, 1000)] = 50
    trainBatchSize: Annotated[int, WithinRange(1, 256)] = 8
    learningRate: Annotated[float, WithinRange(0.00001, 1.0)] = 0.001
    loss: Annotated[str, Choice(["dice", "dice_ce"])] = "dice_ce"
    contextSlices: Annotated[int, WithinRange(0, 4)] = 0
    baseFilters: Annotated[int, WithinRange(4, 64)] = 16
    augmentation: Annotated[str, Choice(["standard", "scanner"])] = "standard"
    sourceSampling: Annotated[str, Choice(["slices", "sqrt", "equal"])] = "slices"
    halfWeights: bool = False
    trainedModelName: str = "my-model"
    runFolder: pathlib.Path
    trainingChart: vtkMRMLPlotChartNode


@parameterNodeWrapper
class IVDSegmentationParameterNode:
    """All state of the panel, saved with the scene: inputVolume - the volume to segment; modelName - "<name>
    <version>" of the chosen package (see modelKey; a bare name also matches); device - "auto", "gpu" or "cpu";
    batchSize - slices per network call; labelLevels - one segment per disc named by level, with points and a table
    (models that name disc levels); workerPython - the worker's Python (empty: Slicer's own); outputSegmentation -
    the panel's last result; training - the Training section (TrainingParameters)."""

    inputVolume: vtkMRMLScalarVolumeNode
    modelName: str = ""
    device: Annotated[str, Choice(["auto", "gpu", "cpu"])] = "auto"
    batchSize: Annotated[int, WithinRange(1, 256)] = 16
    labelLevels: bool = True
    workerPython: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    training: TrainingParameters


class IVDSegmentationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._models = []  # ModelInfo, in the order of the model selector's items
        self._runner = JobRunner(POLL_INTERVAL_MS)  # follows the running segmentation
        self._jobVolume = None  # its input
        self._jobStartTime, self._jobSummary = 0.0, {}  # _jobSummary: the worker's "done" event
        self._cancelRequested = self._packagesChecked = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/IVDSegmentation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = IVDSegmentationLogic()
        IVDSegmentation.loadTerminology()  # when the module was loaded after start-up (e.g. reloaded)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.dicomButton.connect("clicked(bool)", self.onDicomButton)
        self.ui.installModelButton.connect("clicked(bool)", self.onInstallModelButton)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.workerPythonPathLineEdit.connect("currentPathChanged(QString)", self.onWorkerPythonChanged)
        self.ui.progressBar.hide()
        self.correctionPanel = CorrectionPanel(self.ui, self.logic, lambda: self._parameterNode, self._currentModel,
                                               self._updateGui)
        self.trainingPanel = TrainingPanel(self.ui, onModelInstalled=self.refreshModels)

        self.refreshModels()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.correctionPanel.cleanup()
        self._runner.stop()
        self.trainingPanel.cleanup()
        self.removeObservers()

    def enter(self) -> None:
        self.refreshModels()  # packages may have been added to the model folder meanwhile
        self.initializeParameterNode()

    def exit(self) -> None:
        # The poll timer keeps running: a job started here finishes while another module is shown.
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)

    def onSceneStartClose(self, caller, event) -> None:
        self.correctionPanel.cleanup()  # its points are about to go away
        if self._runner.running:  # its input volume is about to go away
            self._cancelRequested = True
            self._runner.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not findModel(self._models, self._parameterNode.modelName) and self._models:
            self._parameterNode.modelName = modelKey(self._models[0])

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui are bound here. Not the model selector
            # (its items are known only at run time) nor the path line edit (its connector takes pathlib.Path
            # only): _updateGui and their slots keep those two in step with the parameter node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            for index, choice in enumerate(["auto", "gpu", "cpu"]):  # the connector wrote the raw choices
                self.ui.deviceComboBox.setItemText(index, DEVICE_LABELS[choice])
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGui)
            self._updateGui()
        self.trainingPanel.setParameterNode(inputParameterNode)  # after connectGui, which rewrote its combo boxes

    # ------------------------------------------------------------------ GUI state
    def _updateGui(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        model = findModel(self._models, p.modelName)
        wasBlocked = self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.currentIndex = next((i for i, m in enumerate(self._models) if m is model), -1)
        self.ui.modelSelector.blockSignals(wasBlocked)
        self.ui.modelCardLabel.text = self._cardText(model)
        if self.ui.workerPythonPathLineEdit.currentPath != p.workerPython:
            wasBlocked = self.ui.workerPythonPathLineEdit.blockSignals(True)
            self.ui.workerPythonPathLineEdit.currentPath = p.workerPython
            self.ui.workerPythonPathLineEdit.blockSignals(wasBlocked)

        running = self._runner.running
        for widget in (self.ui.inputVolumeSelector, self.ui.dicomButton, self.ui.modelSelector,
                       self.ui.installModelButton, self.ui.deviceComboBox, self.ui.batchSizeSpinBox,
                       self.ui.workerPythonPathLineEdit):
            widget.enabled = not running
        self.ui.labelLevelsCheckBox.enabled = not running and bool(model and model.levels)
        self.correctionPanel.updateGui(running, model, p.inputVolume)
        ready = bool(p.inputVolume and model)
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.enabled = not self._cancelRequested if running else ready
        self.ui.applyButton.toolTip = (_("Stop the segmentation; the scene stays as it was.") if running
                                       else _("Segment the input volume with the selected model.") if ready
                                       else _("Select an input volume and a model."))

    @staticmethod
    def _cardText(model) -> str:
        if model is None:
            return _("No model selected. Install a model package or check the model folder.")
        origin = _("bundled model") if model.builtin else _("installed model")
        return "\n".join(line for line in (cardSummary(model), f"{origin}: {model.path}", model.description) if line)

    def refreshModels(self) -> None:
        """Fills the model selector from the bundled and installed model packages."""
        self._models = self.logic.listModels()
        wasBlocked = self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for info in self._models:
            self.ui.modelSelector.addItem(modelKey(info))
        self.ui.modelSelector.blockSignals(wasBlocked)
        self._updateGui()

    def _currentModel(self):
        return findModel(self._models, self._parameterNode.modelName) if self._parameterNode else None

    def onModelSelected(self, index) -> None:
        if self._parameterNode and 0 <= index < len(self._models):
            self._parameterNode.modelName = modelKey(self._models[index])

    def onWorkerPythonChanged(self, path) -> None:
        if self._parameterNode:
            self._parameterNode.workerPython = path
        self._packagesChecked = False

    # ------------------------------------------------------------------ input and models
    def onDicomButton(self) -> None:
        db = getattr(slicer, "dicomDatabase", None)
        if db is None or not db.isOpen:
            slicer.util.warningDisplay(_("Slicer's DICOM database is not open. Import the images in the DICOM module first."))
            return
        seriesUID = chooseDicomSeries(db, slicer.util.mainWindow())
        if not seriesUID:
            return
        with slicer.util.tryWithErrorDisplay(_("Could not load the DICOM series."), waitCursor=True):
            volumeNode = self.logic.loadDicomSeries(seriesUID)
            self._parameterNode.inputVolume = volumeNode
            slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)

    def onInstallModelButton(self) -> None:
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Install a model package"), "",
                                              _("Model package (*.zip model.json)"))
        if not path:
            return
        if os.path.basename(path) == "model.json":  # a package folder, chosen by its card
            path = os.path.dirname(path)
        with slicer.util.tryWithErrorDisplay(_("Could not install the model."), waitCursor=True):
            info = self.logic.installModel(path)
            self.refreshModels()
            self._parameterNode.modelName = modelKey(info)
            self.ui.statusLabel.text = _("Installed {model} in {folder}.").format(
                model=modelKey(info), folder=self.logic.userModelsDir())

    # ------------------------------------------------------------------ segmentation
    def _ensureInferencePackages(self) -> bool:
        """Offers to install missing inference packages; True when the worker can run."""
        if self._packagesChecked:
            return True
        missing = self.logic.missingInferencePackages()
        if missing and self.logic.workerPython:
            raise ValueError(_("The worker Python {python} lacks {packages}; install them there with pip.").format(
                python=self.logic.workerPython, packages=", ".join(missing)))
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                    _("Segmentation needs these Python packages, not installed yet:\n\n{packages}\n\n"
                      "Install them now? This takes a few minutes.").format(packages="\n".join(missing)),
                    windowTitle=_("Install inference packages")):
                return False
            if self.logic.installInferencePackages():
                slicer.util.infoDisplay(_("The packages are installed. Restart Slicer, then Apply again."))
                return False
        self._packagesChecked = True
        return True

    def onApplyButton(self) -> None:
        if self._runner.running:
            self._cancelRequested = True
            self._runner.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
            self._updateGui()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            self.logic.workerPython = p.workerPython or None
            if not self._ensureInferencePackages():
                return
            model = findModel(self._models, p.modelName)
            levels = bool(model and p.labelLevels and model.levels)
            job = self.logic.startSegmentation(p.inputVolume, model.path if model else "", device=p.device,
                                               batchSize=p.batchSize, levels=levels)
            self._jobVolume, self._jobStartTime, self._jobSummary = p.inputVolume, time.time(), {}
            self._cancelRequested = False
            self.ui.progressBar.setRange(0, 0)  # busy indicator until the first progress event
            self.ui.progressBar.show()
            self.ui.statusLabel.text = _("Starting the worker...")
            self._runner.start(job, self._onJobEvent, self._finishJob)
            self._updateGui()

    def _onJobEvent(self, event) -> None:
        kind = event.get("event")
        if kind == "progress" and event.get("total"):
            self.ui.progressBar.setRange(0, int(event["total"]))
            self.ui.progressBar.value = int(event["done"])
            self.ui.progressBar.setFormat(f"{event.get('stage', '')} %v/%m")
        elif kind in ("message", "error", "warning"):
            self.ui.statusLabel.text = event.get("text") or event.get("message") or ""
        elif kind == "done":
            self._jobSummary = event

    def _finishJob(self, job) -> None:
        """Called by the runner once the worker has ended and its last event was read."""
        volumeNode, cancelled = self._jobVolume, self._cancelRequested
        self._jobVolume, self._cancelRequested = None, False
        self.ui.progressBar.hide()
        segmentationNode = None
        try:
            if cancelled:
                with contextlib.suppress(RuntimeError):  # raised for a cancelled job, after removing its files
                    self.logic.finishSegmentation(job)
                self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
                return
            with slicer.util.tryWithErrorDisplay(_("Segmentation failed."), waitCursor=True):
                segmentationNode = self.logic.finishSegmentation(job)
        except Exception as exc:  # noqa: BLE001 - tryWithErrorDisplay has shown it and re-raised; keep the slot quiet
            self.ui.statusLabel.text = str(exc)
            if job.log:
                logger.error("IVDSegmentation worker log:\n%s", job.log)
        finally:
            self._updateGui()
        if segmentationNode is None or self._parameterNode is None:
            return
        self._parameterNode.outputSegmentation = segmentationNode
        segmentationNode.CreateDefaultDisplayNodes()
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=True)
        showDiscTable(volumeNode, segmentationNode)
        seconds = float(self._jobSummary.get("seconds", time.time() - self._jobStartTime))
        device = self._jobSummary.get("device", self._parameterNode.device)
        self.ui.statusLabel.text = _("Done in {seconds:.1f} s on {device}: {name}.").format(
            seconds=seconds, device=device, name=segmentationNode.GetName())


class IVDSegmentationLogic(ScriptedLoadableModuleLogic, SegmentationLogic):
    """SegmentationLogic (IVDSegmentationLib.logic) with the module's parameter node; usable without the GUI:

    logic = slicer.util.getModuleLogic("IVDSegmentation")
    segmentationNode = logic.segment(volumeNode, logic.listModels()[0].path, device="cpu")
    """

    def __init__(self, workerPython=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        SegmentationLogic.__init__(self, workerPython)

    def getParameterNode(self):
        return IVDSegmentationParameterNode(super().getParameterNode())


def _idle(milliseconds=20):
    """Lets Slicer process events for a moment: the self-test waits for the worker without freezing the GUI."""
    loop = qt.QEventLoop()
    qt.QTimer.singleShot(milliseconds, loop.quit)
    loop.exec_()


class IVDSegmentationTest(ScriptedLoadableModuleTest):
    """The shared scenarios (IVDSegmentationLib.scenarios, also run by pytest), then the panel itself.

    The logic scenarios always run. Those that need the inference or training packages run when the packages are
    there, and otherwise say once, plainly, that they did not run (Reload and Test calls runTest directly, where a
    skipped test would be a failure that stops the remaining tests).
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_LogicScenarios, self.test_InferenceScenarios, self.test_PanelAppliesAndCancels,
                     self.test_TrainingScenario):
            self.setUp()
            test()

    def _canRun(self, what, missing) -> bool:
        """False, after saying so once, when the worker lacks packages a scenario needs."""
        if missing:
            message = f"IVDSegmentation self-test: {what} did not run: the worker lacks {', '.join(missing)}."
            logger.warning(message)
            self.delayDisplay(message)
        return not missing

    def test_LogicScenarios(self):
        """Geometry round trip, segments from a labelmap (terminology, tags, hierarchy), replacing the own result,
        the terminology context, training pairs and curves: no optional package needed."""
        from IVDSegmentationLib import scenarios

        self.delayDisplay("Logic scenarios")
        scenarios.runLogicScenarios(self, slicer.modules.terminologies.logic())

    def test_InferenceScenarios(self):
        """The bundled model in the worker on a synthetic spine, then Cancel."""
        from IVDSegmentationLib import scenarios

        if not self._canRun("the inference scenarios", scenarios.missingForInference()):
            return
        self.delayDisplay("Segmenting a synthetic spine in the worker")
        scenarios.runInferenceScenarios(self, idle=_idle)

    def _waitWhileRunning(self, widget, timeout):
        deadline = time.monotonic() + timeout
        while widget._runner.running and time.monotonic() < deadline:
            _idle()
        self.assertFalse(widget._runner.running, "the panel's job did not end in time")

    def test_PanelAppliesAndCancels(self):
        """Apply in the panel gives a segmentation; Apply then Cancel leaves the scene as it was."""
        from IVDSegmentationLib import scenarios

        if not self._canRun("the panel's Apply/Cancel test", scenarios.missingForInference()):
            return
        widget = slicer.modules.ivdsegmentation.widgetRepresentation().self()
        widget.initializeParameterNode()
        volumeNode, _truth = scenarios.addPhantomVolume("Panel test")
        parameterNode = widget.logic.getParameterNode()
        parameterNode.inputVolume, parameterNode.device, parameterNode.batchSize = volumeNode, "cpu", 8
        self.assertEqual(widget.ui.inputVolumeSelector.currentNode(), volumeNode)
        self.assertEqual(widget.ui.batchSizeSpinBox.value, 8)
        self.assertTrue(widget.ui.applyButton.enabled)

        widget.onApplyButton()
        self.assertEqual(widget.ui.applyButton.text, "Cancel")
        self._waitWhileRunning(widget, timeout=600)
        self.assertEqual(widget.ui.applyButton.text, "Apply")
        result = parameterNode.outputSegmentation
        self.assertIsNotNone(result)
        self.assertGreater(result.GetSegmentation().GetNumberOfSegments(), 0)

        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        widget.onApplyButton()
        _idle(300)
        widget.onApplyButton()  # now the Cancel button
        self._waitWhileRunning(widget, timeout=10)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.assertEqual(widget.ui.applyButton.text, "Apply")

    def test_TrainingScenario(self):
        """Two synthetic cases exported and trained for one epoch in the worker; the model installed and listed."""
        from IVDSegmentationLib import scenarios

        if not self._canRun("the training scenario", scenarios.missingForTraining()):
            return
        self.delayDisplay("Exporting and training in the worker")
        scenarios.runTrainingScenario(self, idle=_idle)
        widget = slicer.modules.ivdsegmentation.widgetRepresentation().self()
        widget.initializeParameterNode()
        widget.trainingPanel.refreshPairs()
        self.assertGreaterEqual(widget.ui.casesTableWidget.rowCount, 2)
