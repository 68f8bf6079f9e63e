"""A dialog listing the patients, studies and series of Slicer's DICOM database; returns the chosen series."""

import qt
import slicer
from slicer.i18n import tr as _


def _treeItem(texts, seriesUID=None):
    item = qt.QTreeWidgetItem()
    for column, text in enumerate(texts):
        item.setText(column, text)
    if seriesUID:
        item.setData(0, qt.Qt.UserRole, seriesUID)
    return item


def chooseDicomSeries(db, parent=None):
    """Shows patients > studies > series of ``db`` (slicer.dicomDatabase); returns the chosen SeriesInstanceUID or
    None. The dialog is deleted when it closes."""
    dialog = qt.QDialog(parent or slicer.util.mainWindow())
    try:
        dialog.setWindowTitle(_("Choose a DICOM series"))
        dialog.resize(640, 420)
        layout = qt.QVBoxLayout(dialog)
        tree = qt.QTreeWidget()
        tree.setHeaderLabels([_("Patient / study / series"), _("Modality"), _("Files")])
        for patient in db.patients():
            patientItem = _treeItem([db.nameForPatient(patient) or patient])
            tree.addTopLevelItem(patientItem)
            for study in db.studiesForPatient(patient):
                studyItem = _treeItem([db.descriptionForStudy(study) or _("(study without description)")])
                patientItem.addChild(studyItem)
                for series in db.seriesForStudy(study):
                    studyItem.addChild(_treeItem(
                        [db.descriptionForSeries(series) or _("(series without description)"),
                         db.fieldForSeries("Modality", series), str(len(db.filesForSeries(series)))],
                        seriesUID=series))
        tree.expandAll()
        tree.resizeColumnToContents(0)
        layout.addWidget(tree)
        buttonBox = qt.QDialogButtonBox()
        buttonBox.setStandardButtons(qt.QDialogButtonBox.Ok | qt.QDialogButtonBox.Cancel)
        buttonBox.connect("accepted()", dialog, "accept()")
        buttonBox.connect("rejected()", dialog, "reject()")
        tree.connect("itemDoubleClicked(QTreeWidgetItem*,int)", lambda item, column: dialog.accept())
        layout.addWidget(buttonBox)
        if dialog.exec_() != qt.QDialog.Accepted or tree.currentItem() is None:
            return None
        seriesUID = tree.currentItem().data(0, qt.Qt.UserRole)
        if not seriesUID:
            slicer.util.warningDisplay(_("Choose a series, not a patient or a study."))
        return seriesUID or None
    finally:
        dialog.deleteLater()  # a parented dialog would otherwise live as long as the main window
