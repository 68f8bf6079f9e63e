"""The "Correct points" buttons of IVDSegmentation: drag a misplaced disc centre, the keypoint network moves the
others (SegmentationLogic.startPointCorrection does the work; this holds the two buttons and the messages)."""

import slicer
from slicer.i18n import tr as _

from IVDSegmentationLib.nodes import findResultNode


class CorrectionPanel:
    """Args: the module widget's ``ui``, its logic, and functions giving the parameter node, the chosen model
    (ModelInfo) and the widget's GUI update."""

    def __init__(self, ui, logic, parameterNode, currentModel, updateGui):
        self.ui, self.logic = ui, logic
        self._parameterNode, self._currentModel, self._updateGui = parameterNode, currentModel, updateGui
        self.ui.correctPointsButton.connect("toggled(bool)", self.onCorrectPoints)
        self.ui.undoCorrectionButton.connect("clicked(bool)", self.onUndoCorrection)

    @staticmethod
    def discCentres(model, volumeNode):
        """The disc-centre point list of the model's last result on ``volumeNode``, or None."""
        if model is None or volumeNode is None:
            return None
        return findResultNode(slicer.mrmlScene, volumeNode, model.name, "vtkMRMLMarkupsFiducialNode", "disc centres")

    def updateGui(self, running, model, volumeNode):
        correcting = self.ui.correctPointsButton.checked
        self.ui.correctPointsButton.enabled = correcting or (
            not running and bool(model and model.correctable and self.discCentres(model, volumeNode)))
        self.ui.undoCorrectionButton.enabled = correcting

    def onCorrectPoints(self, on) -> None:
        if not on:
            self.logic.stopPointCorrection()
            self._updateGui()
            return
        p, model = self._parameterNode(), self._currentModel()
        try:
            with slicer.util.tryWithErrorDisplay(_("Could not start the point correction."), waitCursor=True):
                self.logic.workerPython = p.workerPython or None
                self.logic.startPointCorrection(p.inputVolume, self.discCentres(model, p.inputVolume),
                                                p.outputSegmentation, model.path if model else "",
                                                onCorrected=self._onCorrected, onError=self._onError)
            self.ui.statusLabel.text = _("Drag a misplaced disc centre; when you release it, the others follow.")
        except Exception:  # noqa: BLE001 - shown by tryWithErrorDisplay; the button goes back up
            wasBlocked = self.ui.correctPointsButton.blockSignals(True)
            self.ui.correctPointsButton.checked = False
            self.ui.correctPointsButton.blockSignals(wasBlocked)
        self._updateGui()

    def _onCorrected(self, moved, seconds) -> None:
        self.ui.statusLabel.text = _("Placed {points}; the other points moved in {seconds:.2f} s.").format(
            points=", ".join(moved), seconds=seconds)

    def _onError(self, exc) -> None:
        self.ui.statusLabel.text = str(exc)
        self.ui.correctPointsButton.checked = False  # ends the correction; the points stay as the user left them

    def onUndoCorrection(self) -> None:
        if self.logic.undoPointCorrection():
            self.ui.statusLabel.text = _("The points are back as before the last correction.")

    def cleanup(self) -> None:
        """Ends a running correction (module cleanup, scene close)."""
        self.ui.correctPointsButton.checked = False
        self.logic.stopPointCorrection()
