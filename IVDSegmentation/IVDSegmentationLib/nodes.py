"""MRML nodes <-> the core's volumes, and segmentation nodes built from a labelmap and a model card."""

from __future__ import annotations

import numpy as np
import slicer
import vtk


MODEL_ATTRIBUTE = "IVDSegmentation.Model"
INPUT_ATTRIBUTE = "IVDSegmentation.InputVolumeID"


def ijkToRasArray(volumeNode) -> np.ndarray:
    """The node's IJK-to-RAS matrix as a (4, 4) array (parent transforms are not applied)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volumeFromNode(volumeNode):
    """A core Volume (array (K, J, I), IJK-to-RAS) from a scalar volume node."""
    from ivdseg.io.geometry import Volume

    volumeFromNodeChecks(volumeNode)
    return Volume(np.array(slicer.util.arrayFromVolume(volumeNode)), ijkToRasArray(volumeNode))


def writeVolumeNode(volumeNode, path) -> None:
    """Writes a scalar volume node to NRRD with Slicer's own storage node (no extra package needed).

    Raises:
        ValueError: a node without image data, a colour volume, or a file that could not be written.
    """
    volumeFromNodeChecks(volumeNode)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(False)
    if not storage.WriteData(volumeNode):
        raise ValueError(f"Could not write volume '{volumeNode.GetName()}' to {path}; is the disk full?")


def readLabelArray(path) -> np.ndarray:
    """Reads a labelmap NRRD written by the worker; returns its voxels (K, J, I)."""
    node = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise ValueError(f"The worker's result {path} could not be read.")
    return np.array(slicer.util.arrayFromVolume(node))


def volumeFromNodeChecks(volumeNode) -> None:
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("The input volume has no image data; load a volume first.")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has several components (colour or vector); "
                         "a greyscale MRI is needed.")


def terminologyString(entry: dict | None) -> str:
    """Slicer's serialized terminology entry for a card class (SNOMED CT category and type)."""
    if not entry:
        return ""
    cat, typ = entry["category"], entry["type"]
    return slicer.vtkSlicerTerminologiesModuleLogic.SerializeTerminologyEntry(
        "Segmentation category and type - 3D Slicer General Anatomy list",
        cat[1], cat[0], cat[2], typ[1], typ[0], typ[2], "", "", "",
        "Anatomic codes - DICOM master list", "", "", "", "", "", "")


def findResultNode(scene, volumeNode, modelName):
    """The segmentation node an earlier run of ``modelName`` made for ``volumeNode``, or None."""
    for node in scene.GetNodesByClass("vtkMRMLSegmentationNode"):
        if node.GetAttribute(MODEL_ATTRIBUTE) == modelName and node.GetAttribute(INPUT_ATTRIBUTE) == volumeNode.GetID():
            return node
    return None


def segmentationFromLabelmap(labels: np.ndarray, volumeNode, card: dict, scene=None):
    """Writes the model's result into a segmentation node: one segment per class of the card.

    The node references the input volume's geometry, holds names, colours and SNOMED CT terminology,
    is tagged as automatic (algorithm = model name and version) for DICOM SEG export, and sits under
    the volume's study in the subject hierarchy. A previous result of the same model for the same
    volume is replaced; results of other models are never touched. If anything fails, no new node
    is left in the scene.

    Args:
        labels: (K, J, I) uint8 labelmap on the volume's voxel grid.
        volumeNode: the input volume node.
        card: the model card (name, version, classes).

    Returns:
        the vtkMRMLSegmentationNode.
    """
    scene = scene or slicer.mrmlScene
    expected = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
    if labels.shape != expected:
        raise ValueError(f"The result has {labels.shape} voxels but the volume has {expected}.")
    modelName = card["name"]
    algorithm = f"{card['name']} {card['version']}"
    existing = findResultNode(scene, volumeNode, modelName)
    node = existing or scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    try:
        if existing is None:
            node.SetName(scene.GenerateUniqueName(f"{volumeNode.GetName()} discs ({modelName})"))
            node.CreateDefaultDisplayNodes()
        segmentation = node.GetSegmentation()
        wasModifying = node.StartModify()
        try:
            segmentation.RemoveAllSegments()
            node.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            for cls in card["classes"]:
                segmentId = f"Segment_{cls['value']}"  # the IDs ivdseg.segnrrd writes
                segmentation.AddEmptySegment(segmentId, cls["name"], list(cls["color"]))
                segment = segmentation.GetSegment(segmentId)
                tag = terminologyString(cls.get("terminology"))
                if tag and hasattr(segment, "SetTerminology"):
                    segment.SetTerminology(tag)
                elif tag:
                    segment.SetTag("TerminologyEntry", tag)
                segment.SetTag("DICOM.SegmentAlgorithmType", "AUTOMATIC")
                segment.SetTag("DICOM.SegmentAlgorithmName", algorithm)
                mask = (labels == cls["value"]).astype(np.uint8)
                slicer.util.updateSegmentBinaryLabelmapFromArray(mask, node, segmentId, volumeNode)
        finally:
            node.EndModify(wasModifying)
        node.SetAttribute(MODEL_ATTRIBUTE, modelName)
        node.SetAttribute(INPUT_ATTRIBUTE, volumeNode.GetID())
        placeUnderStudy(scene, node, volumeNode)
    except Exception:
        if existing is None:
            scene.RemoveNode(node)
        raise
    return node


def placeUnderStudy(scene, node, volumeNode):
    """Puts ``node`` beside the volume in the subject hierarchy (under its study, when it has one)."""
    shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if shNode is None:
        return
    volumeItem = shNode.GetItemByDataNode(volumeNode)
    parent = shNode.GetItemParent(volumeItem) if volumeItem else shNode.GetSceneItemID()
    # Slicer's subject hierarchy plugins add an item for each new node; without them, add it here.
    nodeItem = shNode.GetItemByDataNode(node) or shNode.CreateItem(parent, node)
    shNode.SetItemParent(nodeItem, parent)
