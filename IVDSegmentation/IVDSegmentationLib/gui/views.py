"""What the panel shows in Slicer's views beside a result (GUI only: needs slicer.app)."""

from __future__ import annotations

import slicer

from ..nodes import MODEL_ATTRIBUTE, findResultNode


def showDiscTable(volumeNode, segmentationNode) -> None:
    """Shows the model's measurement table for this volume (a run with levels made one) in a layout with a table
    view, as Slicer's Tables module does; without such a table the layout stays as it is."""
    table = findResultNode(slicer.mrmlScene, volumeNode, segmentationNode.GetAttribute(MODEL_ATTRIBUTE),
                           "vtkMRMLTableNode", "disc measurements")
    if table is None:
        return
    layoutManager = slicer.app.layoutManager()
    layoutManager.setLayout(slicer.modules.tables.logic().GetLayoutWithTable(layoutManager.layout))
    slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
    slicer.app.applicationLogic().PropagateTableSelection()
