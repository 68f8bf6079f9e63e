"""DICOM input: a series of Slicer's DICOM database (inside Slicer), or a DICOM folder read with pydicom.

Both end in a scalar volume node placed under its patient and study in the subject hierarchy, so the
segmentation made for it lands beside it and Slicer's DICOM SEG export finds its references.
"""

from __future__ import annotations

import numpy as np
import pydicom
import slicer

from ivdseg.io.dicom import read_series
from ivdseg.io.dicom_index import index_folder


def loadSeriesByUID(seriesUID: str):
    """Loads one series of ``slicer.dicomDatabase`` with Slicer's DICOM plugins; returns its volume node.

    Raises:
        ValueError: the database has no such series, or it did not load as a scalar volume.
    """
    from DICOMLib import DICOMUtils

    db = getattr(slicer, "dicomDatabase", None)
    if db is None or not db.isOpen:
        raise ValueError("Slicer's DICOM database is not open; open it in the DICOM module first.")
    if not db.filesForSeries(seriesUID):
        raise ValueError(f"The DICOM database has no series {seriesUID}.")
    loaded = DICOMUtils.loadSeriesByUID([seriesUID])
    for nodeID in loaded or []:
        node = slicer.mrmlScene.GetNodeByID(nodeID)
        if node is not None and node.IsA("vtkMRMLScalarVolumeNode"):
            return node
    raise ValueError(f"Series {seriesUID} did not load as a scalar volume (is it an image series?).")


def loadSeriesFromFolder(folder, seriesUID: str | None = None, scene=None):
    """Reads a DICOM folder with pydicom (ivdseg.io.dicom) into a new scalar volume node.

    The node gets the series' geometry (IJK-to-RAS from ImagePositionPatient, ImageOrientationPatient and
    PixelSpacing) and sits under its patient and study in the subject hierarchy exactly as Slicer's DICOM module
    places a loaded series: the patient item's DICOM UID is the PatientID (so two patients stay two, and two
    series of one patient share one item), the study's is the StudyInstanceUID, the series' its
    SeriesInstanceUID.

    Raises:
        ivdseg.errors.IvdsegError: a folder without a readable image series (one sentence).
    """
    scene = scene or slicer.mrmlScene
    volume = read_series(folder, series_uid=seriesUID)
    infos = [s for s in index_folder(folder) if seriesUID in (None, s.series_uid)]
    info = infos[0] if infos else None
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    node.SetName(scene.GenerateUniqueName((info.description if info and info.description else "DICOM series")))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(volume.array))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(volume.ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    if info is not None:
        placeInHierarchy(scene, node, info)
    return node


def placeInHierarchy(scene, node, info) -> None:
    """Puts a series' node under its patient and study items (created when missing), keyed by DICOM UIDs."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    seriesItem = shNode.GetItemByDataNode(node) or shNode.CreateItem(shNode.GetSceneItemID(), node)
    shNode.SetItemUID(seriesItem, "DICOM", info.series_uid)
    shNode.SetItemAttribute(seriesItem, "DICOM.Modality", info.modality)
    patientID = info.patient_id or f"Patient-{info.study_uid}"  # what Slicer's DICOM plugins do without an ID
    isNewPatient = not shNode.GetItemByUID("DICOM", patientID)
    slicer.vtkSlicerSubjectHierarchyModuleLogic.InsertDicomSeriesInHierarchy(
        shNode, patientID, info.study_uid, info.series_uid)
    patientItem = shNode.GetItemByUID("DICOM", patientID)
    if isNewPatient and patientItem:
        header = pydicom.dcmread(info.files[0], stop_before_pixels=True)
        patientName = str(header.get("PatientName", "") or "") or "No name"
        shNode.SetItemAttribute(patientItem, "DICOM.PatientID", info.patient_id)
        shNode.SetItemAttribute(patientItem, "DICOM.PatientName", patientName)
        shNode.SetItemName(patientItem, patientName)
        studyItem = shNode.GetItemByUID("DICOM", info.study_uid)
        if studyItem:
            description = str(header.get("StudyDescription", "") or "") or "No study description"
            shNode.SetItemAttribute(studyItem, "DICOM.StudyInstanceUID", info.study_uid)
            shNode.SetItemName(studyItem, description)
