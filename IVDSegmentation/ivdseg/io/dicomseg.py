"""DICOM Segmentation objects (for PACS) from a labelmap on a DICOM series' grid, written with highdicom.

The object references its source series (one frame per source slice that holds a segment), carries each
segment's terminology codes (SNOMED CT: the class's category and type; the level or side stays in the segment
label), the algorithm type AUTOMATIC and the model's name and version, and is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_write
from ivdseg.io.geometry import Volume

# For a class without terminology: the generic codes of DICOM's segmentation property categories and types.
GENERIC_CATEGORY = ("SCT", "85756007", "Tissue")
GENERIC_TYPE = ("SCT", "85756007", "Tissue")
AI_FAMILY = ("DCM", "123110", "Artificial Intelligence")  # CID 7162 Algorithm Family (pydicom's codes.DCM)


def _sorted_source_datasets(source, series_uid):
    """The series' datasets in the order of :func:`ivdseg.io.dicom.read_series`'s slices (along the normal)."""
    import pydicom

    from ivdseg.io.dicom import _choose
    from ivdseg.io.dicom_index import plane_geometry, scan_files, slice_normal

    series, label, n_non_image, damaged = scan_files(source)
    info = _choose(series, series_uid, label, n_non_image, damaged)
    datasets = [pydicom.dcmread(path) for path in info.files]
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise IvdsegError(f"{label} is a multi-frame series; DICOM SEG output needs a series of single-frame "
                          "images, so write a .seg.nrrd or a labelmap instead.")
    iops, ipps = zip(*(plane_geometry(ds) for ds in datasets))
    normal = slice_normal(iops[0])
    order = np.argsort([np.dot(ipp, normal) for ipp in ipps], kind="stable")
    return [datasets[n] for n in order]


def _code(triple):
    from highdicom.sr import CodedConcept

    scheme, value, meaning = triple
    return CodedConcept(value=str(value), scheme_designator=str(scheme), meaning=str(meaning))


def write_dicom_seg(labelmap: Volume, classes: list[dict], source, path, model_name: str, model_version: str,
                    series_uid: str | None = None, overwrite=False, overlapping=False) -> Path:
    """Writes a DICOM SEG of ``labelmap`` (on the grid of the DICOM series ``source``) to ``path``.

    Args:
        labelmap: (K, J, I) labels, as ``ivdseg segment`` makes them from the series (K = its sorted slices).
        classes: value, name and optional terminology of each label (a card's classes, or one per disc).
        source: the DICOM folder or files the labelmap was made from; ``series_uid`` picks the series.
        model_name, model_version: the algorithm's identification in every segment.
        overlapping: ``labelmap`` holds one bit per class (:mod:`ivdseg.data.labels`); each segment keeps its own
            frames, so overlapping segments stay as they are (a binary SEG allows it).

    Raises:
        IvdsegError: the source is not a single-frame series of the labelmap's size, or the file cannot be written.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    from ivdseg import __version__

    datasets = _sorted_source_datasets(source, series_uid)
    shape = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    if tuple(labelmap.array.shape) != shape:
        raise IvdsegError(f"The labelmap has {labelmap.array.shape} voxels but the series has {shape}; DICOM SEG "
                          "needs the labelmap of that series.")
    by_value = {c["value"]: c for c in classes}
    if overlapping:
        from ivdseg.data.labels import class_present

        masks = {c["value"]: class_present(labelmap.array, k + 1, True) for k, c in enumerate(classes)}
        present = [v for v, m in masks.items() if m.any()]
    else:
        present = sorted(int(v) for v in np.unique(labelmap.array) if v)
    algorithm = hd.AlgorithmIdentificationSequence(name=model_name, version=str(model_version),
                                                   family=_code(AI_FAMILY))
    descriptions, remap = [], np.zeros(max(int(labelmap.array.max(initial=0)), *by_value) + 1, np.uint16)
    for number, value in enumerate((v for v in present if v in by_value), start=1):
        entry = by_value[value]
        terminology = entry.get("terminology") or {}
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(entry["name"])[:64],
            segmented_property_category=_code(terminology.get("category") or GENERIC_CATEGORY),
            segmented_property_type=_code(terminology.get("type") or GENERIC_TYPE),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
        remap[value] = number
    if not descriptions:
        raise IvdsegError("The segmentation is empty; a DICOM SEG needs at least one segment, so nothing was written.")
    if overlapping:  # (frames, rows, columns, segments), one binary plane per segment in segment-number order
        pixels = np.stack([masks[v] for v in present if v in by_value], axis=-1).astype(np.uint8)
    else:
        pixels = remap[labelmap.array]
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=generate_uid(), series_number=int(datasets[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="IVDSegmentation",
        manufacturer_model_name=model_name[:64], software_versions=f"ivdseg {__version__}",
        device_serial_number="0", series_description=f"{model_name} {model_version} segmentation"[:64])
    return atomic_write(Path(path), lambda temp: seg.save_as(str(temp)), overwrite=overwrite)
