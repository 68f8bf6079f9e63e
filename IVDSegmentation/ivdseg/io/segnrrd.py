"""Slicer segmentation files (``.seg.nrrd``) written from a labelmap, without Slicer, through ``slicerio``.

``slicerio`` (by Slicer's developers) writes the NRRD and Slicer's per-segment header fields (``Segment{N}_ID``,
``_Name``, ``_Color``, ``_LabelValue``, ``_Layer``, ``_Extent``, ``_Tags``, the ``Segmentation_*`` fields) and
handles overlapping segments in layers; this module only checks the labelmap, describes the segments
(:func:`ivdseg.models.terminology.segment_descriptions`, the builder the Slicer side uses too) and writes
atomically. The file is a uint8 labelmap (label value = class value) on the labelmap's own voxel grid, which also
becomes the segmentation's reference image geometry: one layer, or for overlapping classes one layer per group of
classes that do not overlap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_write
from ivdseg.io.geometry import Volume
from ivdseg.models.terminology import segment_descriptions

_LPS_SIGNS = np.array([-1.0, -1.0, 1.0])


def _number(x) -> str:
    return repr(float(x) + 0.0)  # shortest exact text, as Slicer's vtkNumberToString; + 0.0 turns -0.0 into 0.0


def _check_labels(array: np.ndarray, classes: list[dict]) -> None:
    if array.size == 0:
        raise ValueError(f"The labelmap is empty {array.shape}; a .seg.nrrd needs at least one voxel.")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"The labelmap must hold integer labels; got dtype {array.dtype}.")
    if not classes:
        raise ValueError("classes is empty; without segments Slicer would import the file as a plain labelmap.")
    values = [cls.get("value") for cls in classes]
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"Class values must be unique; got {values}.")
    known = {v for v in values if isinstance(v, int) and not isinstance(v, bool)}
    unknown = sorted(set(np.unique(array).tolist()) - {0, *known})
    if unknown:
        raise ValueError(f"The labelmap holds labels {unknown} that no class describes (classes: {values}).")


def _layers(bits: np.ndarray, classes: list[dict]) -> tuple[np.ndarray, dict]:
    """Bit-coded labels of overlapping classes -> (layers (L, K, J, I) uint8, {class value: layer}): each class goes
    into the first layer where it overlaps no class already there (a new layer otherwise), as Slicer stores
    overlapping segments; within a layer a voxel holds the class value."""
    from ivdseg.data.labels import class_present

    values = [int(c["value"]) for c in classes]
    if bits.size and int(bits.max()) >= 1 << len(values):
        raise ValueError(f"The labels set bits beyond the {len(values)} classes.")
    layers: list[np.ndarray] = []
    where: dict[int, int] = {}
    for k, value in enumerate(values):
        mask = class_present(bits, k + 1, True)
        free = next((n for n, layer in enumerate(layers) if not np.any(layer[mask])), None)
        if free is None:
            layers.append(np.zeros(bits.shape, np.uint8))
            free = len(layers) - 1
        layers[free][mask] = value
        where[value] = free
    return np.stack(layers or [np.zeros(bits.shape, np.uint8)]), where


def segmentation_dict(labelmap: Volume, classes: list[dict], algorithm_name: str | None = None,
                      overlapping: bool = False) -> dict:
    """The ``slicerio`` segmentation of ``labelmap``: voxels (I, J, K) uint8, IJK-to-LPS, one segment per class;
    with ``overlapping``, ``labelmap`` holds class bits (bit k = ``classes[k]``) and the voxels get one layer per
    group of classes that do not overlap, (L, I, J, K).

    Raises:
        ValueError: see :func:`write_seg_nrrd`.
    """
    if not classes:
        raise ValueError("classes is empty; without segments Slicer would import the file as a plain labelmap.")
    segments = segment_descriptions(classes, algorithm_name)
    if overlapping:
        if labelmap.array.size == 0:
            raise ValueError(f"The labelmap is empty {labelmap.array.shape}; a .seg.nrrd needs at least one voxel.")
        stacked, layer_of = _layers(np.asarray(labelmap.array), classes)
        voxels = np.ascontiguousarray(stacked.transpose(0, 3, 2, 1))
        voxels = voxels[0] if len(voxels) == 1 else voxels
    else:
        _check_labels(labelmap.array, classes)
        voxels = np.ascontiguousarray(labelmap.array.astype(np.uint8).transpose(2, 1, 0))  # (I, J, K): order F
        layer_of = {}
    size_k, size_j, size_i = labelmap.array.shape
    extent = [0, size_i - 1, 0, size_j - 1, 0, size_k - 1]
    # Reference image geometry: the 16 IJK-to-RAS elements row by row, then the extent, each ending in ";".
    geometry = "".join(_number(x) + ";" for x in labelmap.ijk_to_ras.ravel()) + "".join(f"{e};" for e in extent)
    ijk_to_lps = labelmap.ijk_to_ras.copy()
    ijk_to_lps[:3, :] *= _LPS_SIGNS[:, np.newaxis]
    return {
        "voxels": voxels,
        "ijkToLPS": ijk_to_lps + 0.0,
        "encoding": "gzip",
        "containedRepresentationNames": ["Binary labelmap"],
        # Written as the raw field (slicerio copies unknown keys): Slicer reads the parameter list only when each
        # "name|value|description" ends in "&", which slicerio's own "conversionParameters" leaves off the last.
        "Segmentation_ConversionParameters": "Reference image geometry|" + geometry
                                             + "|Image geometry of the labelmap the segments were made on.&",
        "segments": [{"id": s["id"], "name": s["name"], "color": list(s["color"]),
                      "labelValue": s["label_value"], "layer": layer_of.get(s["label_value"], 0), "extent": extent,
                      "nameAutoGenerated": False, "colorAutoGenerated": False,  # chosen: Slicer must keep them
                      "tags": dict(sorted(s["tags"].items()))} for s in segments],
    }


def write_seg_nrrd(labelmap: Volume, classes: list[dict], path, overwrite: bool = False,
                   algorithm_name: str | None = None, overlapping: bool = False) -> Path:
    """Writes a labelmap as a Slicer segmentation, atomically (temporary file beside the target, then renamed).

    Slicer opens the file as a segmentation node with one segment per class, in one shared layer, on the
    labelmap's own voxel grid (which also becomes the node's reference geometry).

    Args:
        labelmap: integer labels, array (K, J, I), 0 = background; every other label must be a class value.
        classes: one dict per segment, in segment order: ``value`` (1..255), ``name``, ``color`` (r, g, b in 0..1)
            and optionally ``terminology`` (see :func:`ivdseg.models.terminology.terminology_entry`).
        path: target file, ending in ``.seg.nrrd``.
        overwrite: replace an existing file.
        algorithm_name: when given, every segment is tagged ``DICOM.SegmentAlgorithmType`` = ``AUTOMATIC`` and
            ``DICOM.SegmentAlgorithmName`` = this name, as Slicer's DICOM SEG export expects of a model's output.
        overlapping: ``labelmap`` holds one bit per class (bit k = ``classes[k]``, :mod:`ivdseg.data.labels`); the
            segments may overlap and are stored in as many layers as they need (Slicer shows them as they are).

    Returns:
        The path written.

    Raises:
        ValueError: no classes, a bad class (value, name, colour, terminology), labels without a class, a
            non-integer or empty labelmap.
        IvdsegError: the name does not end in ``.seg.nrrd``, the target exists and not ``overwrite``, the folder
            is missing or not writable, or the write failed (no temporary file is left behind).
    """
    path = Path(path)
    if not path.name.lower().endswith(".seg.nrrd"):
        raise IvdsegError(f"{path} does not end in .seg.nrrd; Slicer opens only such files as segmentations.")
    segmentation = segmentation_dict(labelmap, classes, algorithm_name, overlapping)
    import slicerio

    atomic_write(path, lambda temp: slicerio.write_segmentation(str(temp), segmentation), overwrite)
    return path
