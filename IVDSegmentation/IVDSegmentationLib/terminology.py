"""The extension's terminology context (intervertebral disc and its neighbours) for Slicer's Terminologies module.

Slicer's default contexts lack intervertebral disc (SNOMED CT 360499006), so without this file the terminology
selector cannot show the type of the segments the models make. The module loads it once Slicer has started.
"""

from __future__ import annotations

from pathlib import Path

import vtk

from ivdseg.models.terminology import CONTEXT_NAME

TERMINOLOGY_FILE = (Path(__file__).resolve().parents[1] / "Resources" / "Terminology"
                    / "SegmentationCategoryTypeModifier-IVDSegmentation.term.json")


def loadTerminologyContext(terminologiesLogic) -> str:
    """Loads the context into a vtkSlicerTerminologiesModuleLogic; returns its name.

    Raises:
        RuntimeError: the file is missing or Slicer refused it (the name it gives is not CONTEXT_NAME).
    """
    if not TERMINOLOGY_FILE.is_file():
        raise RuntimeError(f"The terminology context {TERMINOLOGY_FILE} is missing; reinstall the extension.")
    name = terminologiesLogic.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))
    if name != CONTEXT_NAME:
        raise RuntimeError(f"Slicer did not load the terminology context {TERMINOLOGY_FILE} (got {name!r}).")
    return name


def loadedContextNames(terminologiesLogic) -> list:
    names = vtk.vtkStringArray()
    terminologiesLogic.GetLoadedTerminologyNames(names)
    return [names.GetValue(i) for i in range(names.GetNumberOfValues())]


def ensureTerminologyContext(terminologiesLogic) -> str:
    """Loads the context unless it is loaded already (start-up, then every module widget set-up after a reload)."""
    if CONTEXT_NAME in loadedContextNames(terminologiesLogic):
        return CONTEXT_NAME
    return loadTerminologyContext(terminologiesLogic)
