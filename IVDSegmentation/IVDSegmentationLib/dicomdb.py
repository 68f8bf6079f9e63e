"""DICOM input: a series of Slicer's DICOM database (inside Slicer), or a DICOM folder read with pydicom.

Both end in a scalar volume node placed under its patient and study in the subject hierarchy, so the
segmentation made for it lands beside it and Slicer's DICOM SEG export finds its references.
"""

from __future__ import annotations

import numpy as np
import slicer

from ivdseg.io.dicom import index_folder, read_series


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
    """Reads a DICOM folder with pydicom (ivdseg.dicom) into a new scalar volume node.

    The node gets the series' geometry (IJK-to-RAS from ImagePositionPatient, ImageOrientationPatient
    and PixelSpacing) and sits under patient and study items in the subject hierarchy.

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
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        patient = shNode.CreateSubjectItem(shNode.GetSceneItemID(), "Patient")
        study = shNode.CreateStudyItem(patient, "Study")
        shNode.SetItemUID(study, "DICOM", info.study_uid)
        item = shNode.GetItemByDataNode(node) or shNode.CreateItem(study, node)
        shNode.SetItemParent(item, study)
        shNode.SetItemUID(item, "DICOM", info.series_uid)
    return node
