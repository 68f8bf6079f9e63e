"""MRML nodes <-> the core's volumes, and segmentation nodes built from a labelmap and a model card."""

from __future__ import annotations

import contextlib

import numpy as np
import slicer
import vtk

from ivdseg.data.labels import class_present
from ivdseg.models.terminology import segment_descriptions


MODEL_ATTRIBUTE = "IVDSegmentation.Model"
INPUT_ATTRIBUTE = "IVDSegmentation.InputVolumeID"
KIND_ATTRIBUTE = "IVDSegmentation.Result"  # "disc centres" or "disc measurements" beside the segmentation


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


def arrayOnGrid(node, ijkToRas: np.ndarray) -> np.ndarray:
    """The node's voxels (K, J, I) on the grid ``ijkToRas``, which may differ from the node's by axis flips only.

    Slicer's volume reader turns a left-handed grid into a right-handed one (it reverses an axis, moving the
    origin to the other end), so a file written from a left-handed node reads back mirrored; this undoes it.

    Raises:
        ValueError: the grids differ by more than axis flips (another spacing, orientation or extent).
    """
    array = np.array(slicer.util.arrayFromVolume(node))
    ours = ijkToRasArray(node)
    signs = np.sign(np.einsum("ij,ij->j", ours[:3, :3], ijkToRas[:3, :3]))  # +1 same direction, -1 reversed
    shape_ijk = array.shape[::-1]
    expected = ours.copy()  # the node's grid with the reversed axes turned round: the wanted grid, if all is well
    for axis in range(3):
        if signs[axis] < 0:
            expected[:3, 3] = expected[:3, 3] + ours[:3, axis] * (shape_ijk[axis] - 1)
            expected[:3, axis] = -ours[:3, axis]
    if not np.allclose(expected, ijkToRas, atol=1e-4):
        raise ValueError("The worker's result lies on another grid than its volume; it was not imported.")
    for axis in range(3):
        if signs[axis] < 0:
            array = np.flip(array, axis=2 - axis)  # array axes are (k, j, i)
    return np.ascontiguousarray(array)


def readLabelArray(path, referenceVolumeNode=None) -> np.ndarray:
    """Reads a labelmap NRRD written by the worker; returns its voxels (K, J, I) on the reference volume's grid
    (default: as the file stores them)."""
    node = slicer.vtkMRMLLabelMapVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise ValueError(f"The worker's result {path} could not be read.")
    if referenceVolumeNode is None:
        return np.array(slicer.util.arrayFromVolume(node))
    return arrayOnGrid(node, ijkToRasArray(referenceVolumeNode))


def volumeFromNodeChecks(volumeNode) -> None:
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise ValueError("The input volume has no image data; load a volume first.")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise ValueError(f"Volume '{volumeNode.GetName()}' has several components (colour or vector); "
                         "a greyscale MRI is needed.")


def findResultNode(scene, volumeNode, modelName, className="vtkMRMLSegmentationNode", kind=None):
    """The node of ``className`` an earlier run of ``modelName`` made for ``volumeNode`` (of that ``kind``), or
    None."""
    for node in scene.GetNodesByClass(className):
        if (node.GetAttribute(MODEL_ATTRIBUTE) == modelName and node.GetAttribute(INPUT_ATTRIBUTE) == volumeNode.GetID()
                and node.GetAttribute(KIND_ATTRIBUTE) == kind):
            return node
    return None


@contextlib.contextmanager
def _resultNode(scene, volumeNode, modelName, className, kind):
    """Yields the model's earlier node of this kind for the volume (to be refilled) or a new one, and puts it beside
    the volume; if filling it fails, a new node is removed again."""
    existing = findResultNode(scene, volumeNode, modelName, className, kind)
    node = existing or scene.AddNewNodeByClass(className)
    if existing is None:
        node.SetName(scene.GenerateUniqueName(f"{volumeNode.GetName()} {kind} ({modelName})"))
        for key, value in ((MODEL_ATTRIBUTE, modelName), (INPUT_ATTRIBUTE, volumeNode.GetID()), (KIND_ATTRIBUTE, kind)):
            node.SetAttribute(key, value)
    try:
        yield node
        placeUnderStudy(scene, node, volumeNode)
    except Exception:
        if existing is None:
            scene.RemoveNode(node)
        raise


def discPointsFromFile(path, volumeNode, modelName, scene=None):
    """The disc centres of ``segment --points`` as a point list beside the segmentation (replacing the model's
    earlier one for this volume): one control point per disc, labelled by level, movable by the user."""
    from ivdseg.io.markups import read_points

    scene = scene or slicer.mrmlScene
    points = read_points(path)
    with _resultNode(scene, volumeNode, modelName, "vtkMRMLMarkupsFiducialNode", "disc centres") as node:
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        wasModifying = node.StartModify()
        try:
            node.RemoveAllControlPoints()
            for n, p in enumerate(points):
                node.AddControlPoint(vtk.vtkVector3d(*p.ras), p.label)
                node.SetNthControlPointDescription(n, p.description)
                node.SetNthControlPointLocked(n, p.locked)
        finally:
            node.EndModify(wasModifying)
    return node


def _column(name: str, cells: list[str]):
    """A vtk column: numbers (empty cells NaN) when every cell reads as one, else text."""
    try:
        values = [float(x) if x != "" else float("nan") for x in cells]
        column = vtk.vtkDoubleArray()
    except ValueError:
        values, column = cells, vtk.vtkStringArray()
    for v in values:
        column.InsertNextValue(v)
    column.SetName(name)
    return column


def discTableFromFile(path, volumeNode, modelName, scene=None):
    """The measurements of ``segment --table`` as a table node (replacing the model's earlier one for this volume)."""
    import csv

    scene = scene or slicer.mrmlScene
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    with _resultNode(scene, volumeNode, modelName, "vtkMRMLTableNode", "disc measurements") as node:
        table = vtk.vtkTable()
        for c, name in enumerate(header):
            table.AddColumn(_column(name, [r[c] for r in body]))
        node.SetAndObserveTable(table)
        node.SetUseColumnTitleAsColumnHeader(True)
    return node


def removeResultNodes(volumeNode, modelName, scene=None):
    """Removes the model's points and table for this volume (a run without levels leaves none that describe an
    older result)."""
    scene = scene or slicer.mrmlScene
    for className, kind in (("vtkMRMLMarkupsFiducialNode", "disc centres"), ("vtkMRMLTableNode", "disc measurements")):
        node = findResultNode(scene, volumeNode, modelName, className, kind)
        if node is not None:
            scene.RemoveNode(node)


def segmentationFromLabelmap(labels: np.ndarray, volumeNode, card: dict, scene=None):
    """Writes the model's result into a segmentation node: one segment per class of the card.

    The node references the input volume's geometry, holds names, colours and SNOMED CT terminology,
    is tagged as automatic (algorithm = model name and version) for DICOM SEG export, and sits under
    the volume's study in the subject hierarchy. A previous result of the same model for the same
    volume is replaced; results of other models are never touched. If anything fails, no new node
    is left in the scene.

    Args:
        labels: (K, J, I) uint8 labelmap on the volume's voxel grid: class values, or, for a card whose classes
            overlap (``card["overlapping"]``), one bit per class; overlapping segments then share voxels, which
            Slicer keeps in separate layers.
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
    segments = segment_descriptions(card["classes"], algorithm_name=f"{card['name']} {card['version']}")
    card_values = [c["value"] for c in card["classes"]]
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
            for description in segments:  # the same segments ivdseg.io.segnrrd writes
                segmentId = description["id"]
                segmentation.AddEmptySegment(segmentId, description["name"], list(description["color"]))
                segment = segmentation.GetSegment(segmentId)
                for key, value in description["tags"].items():
                    segment.SetTag(key, value)  # TerminologyEntry included: the tag SetTerminology writes
                if card.get("overlapping"):
                    mask = class_present(labels, card_values.index(description["label_value"]) + 1, True)
                else:
                    mask = labels == description["label_value"]
                _setSegmentMask(node, segmentId, mask, volumeNode)
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


def _setSegmentMask(segmentationNode, segmentId, mask: np.ndarray, volumeNode) -> None:
    """Sets a segment's binary labelmap from a (K, J, I) mask on the volume's grid, through an oriented image (no
    temporary volume node, whose display node would stay in the scene after each segment)."""
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    k, j, i = mask.shape
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    scalars[:] = mask.astype(np.uint8).reshape(-1)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    mode = slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(image, segmentationNode, segmentId,
                                                                               mode):
        raise RuntimeError(f"Segment {segmentId} could not be set.")


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
