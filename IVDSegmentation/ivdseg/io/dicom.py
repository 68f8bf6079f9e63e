"""Reading one DICOM image series as a :class:`~ivdseg.io.geometry.Volume` (the series found by
:mod:`ivdseg.io.dicom_index`). DICOM patient coordinates are LPS; the volume's matrix is RAS, as in Slicer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ivdseg.errors import IvdsegError
from ivdseg.io.dicom_index import (DamagedFile, SeriesInfo, orientation_name, plane_geometry, scan_files,
                                   slice_normal, warn_skipped)
from ivdseg.io.geometry import Volume

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def _choose(series: list[SeriesInfo], series_uid, label: str, n_non_image: int,
            damaged: list[DamagedFile]) -> SeriesInfo:
    if not series:
        if damaged:
            raise IvdsegError(f"{label} holds {len(damaged)} damaged DICOM file(s) (e.g. {damaged[0].path.name}: "
                              f"{damaged[0].reason}) and no readable image series; copy the series again.")
        if n_non_image:
            raise IvdsegError(f"{label} holds {n_non_image} DICOM file(s) but no image series (only objects "
                              "without pixels, such as reports); choose the folder of the MRI series.")
        raise IvdsegError(f"{label} contains no DICOM image files; choose the folder that holds the MRI series.")
    if series_uid is not None:
        for info in series:
            if info.series_uid == series_uid:
                return info
        raise IvdsegError(f"{label} has no image series with UID {series_uid}; "
                          f"it has {_list_uids(series)}.")
    if len(series) > 1:
        raise IvdsegError(f"{label} holds {len(series)} image series ({_list_uids(series)}); "
                          "pick one with --series UID.")
    return series[0]


def _list_uids(series: list[SeriesInfo], limit: int = 4) -> str:
    shown = [f"{s.series_uid} '{s.description}' {s.orientation} x{s.n_slices}" for s in series[:limit]]
    more = f" and {len(series) - limit} more" if len(series) > limit else ""
    return ", ".join(shown) + more


def _read_full(path: Path):
    try:
        ds = pydicom.dcmread(path, force=False)
        if "PixelData" not in ds:
            raise IvdsegError(f"{path} has no pixel data; it is not an image, so choose an image series.")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise IvdsegError(f"{path} is a colour image; the model takes greyscale MRI, so choose another series.")
        pixels = ds.pixel_array
    except IvdsegError:
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, RuntimeError,
            NotImplementedError, InvalidDicomError) as exc:
        raise IvdsegError(f"{path} could not be decoded ({exc}); the file may be truncated or use a "
                          "compression that needs pylibjpeg or GDCM.") from exc
    return ds, pixels


def _rescale(slices: list[np.ndarray], slopes, intercepts) -> np.ndarray:
    """Applies RescaleSlope/Intercept slice by slice; keeps an integer dtype while the values stay integral."""
    raw = np.stack(slices)
    slopes, intercepts = np.asarray(slopes, float), np.asarray(intercepts, float)
    if np.all(slopes == 1) and np.all(intercepts == 0):
        return raw
    shape = (-1,) + (1,) * (raw.ndim - 1)
    values = raw.astype(np.float64) * slopes.reshape(shape) + intercepts.reshape(shape)
    if np.all(slopes == np.round(slopes)) and np.all(intercepts == np.round(intercepts)):
        low, high = values.min(), values.max()
        for dtype in (raw.dtype, np.int16, np.int32):
            if np.issubdtype(dtype, np.integer) and np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                return values.astype(dtype)
    return values.astype(np.float32)


def _spacing(positions: np.ndarray, ds, label: str, skipped: str = "") -> float:
    """Slice spacing from sorted positions along the normal; refuses duplicated, missing or uneven slices.

    A single slice takes SpacingBetweenSlices, else SliceThickness (from ``ds``), else 1 mm.
    """
    if len(positions) < 2:
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = ds.get(keyword)
            if value not in (None, "") and float(value) > 0:
                return float(value)
        return 1.0
    gaps = np.diff(positions)
    median = float(np.median(gaps))
    if gaps.min() < 1e-3 * max(median, 1e-3):
        raise IvdsegError(f"{label} has several images at the same slice position (echoes, time points or "
                          "repeats); export one echo or time point as its own series.")
    if gaps.max() > 1.5 * median:
        raise IvdsegError(f"{label} has a gap of {gaps.max():.2f} mm between slices spaced {median:.2f} mm; a slice "
                          f"is missing{skipped} or the spacing is uneven, so copy the complete series again.")
    if np.abs(gaps - median).max() > 0.05 * median:
        raise IvdsegError(f"{label} has uneven slice spacing ({gaps.min():.2f} to {gaps.max():.2f} mm); "
                          "resample it to regular slices first.")
    return median


def _matrix(iop, first_ipp, pixel_spacing, normal, slice_spacing) -> np.ndarray:
    """IJK-to-RAS from DICOM geometry: i along the row cosine, j along the column cosine, k along the normal."""
    row, column = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    matrix = np.eye(4)
    matrix[:3, 0] = row * float(pixel_spacing[1]) * _LPS_TO_RAS  # PixelSpacing is (between rows, between columns)
    matrix[:3, 1] = column * float(pixel_spacing[0]) * _LPS_TO_RAS
    matrix[:3, 2] = normal * slice_spacing * _LPS_TO_RAS
    matrix[:3, 3] = np.asarray(first_ipp, float) * _LPS_TO_RAS
    return matrix + 0.0  # no negative zeros


def _slope_intercept(item) -> tuple[float, float]:
    return float(item.get("RescaleSlope", 1) or 1), float(item.get("RescaleIntercept", 0) or 0)


def _frames_geometry(ds, path: Path):
    """Per-frame IOP, IPP, (slope, intercept) and the pixel spacing of a simple enhanced multi-frame file.

    Raises IvdsegError for anything else (no functional groups, differing pixel spacing between frames).
    """
    unsupported = IvdsegError(f"{path} is a multi-frame image without simple per-frame plane positions; "
                              "multi-frame is not supported, so convert it to single-frame files first.")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    shared = shared[0] if shared else pydicom.Dataset()
    if not per_frame:
        raise unsupported

    def item(frame, keyword, required=True):
        for group in (frame, shared):
            if keyword in group and len(group[keyword].value):
                return group[keyword].value[0]
        if required:
            raise unsupported
        return pydicom.Dataset()

    iops, ipps, spacings, scaling = [], [], [], []
    try:
        for frame in per_frame:
            iops.append([float(v) for v in item(frame, "PlaneOrientationSequence").ImageOrientationPatient])
            ipps.append([float(v) for v in item(frame, "PlanePositionSequence").ImagePositionPatient])
            spacings.append([float(v) for v in item(frame, "PixelMeasuresSequence").PixelSpacing])
            scaling.append(_slope_intercept(item(frame, "PixelValueTransformationSequence", required=False)))
    except AttributeError as exc:
        raise unsupported from exc
    if any(len(v) != 6 for v in iops) or any(len(v) != 3 for v in ipps) or any(len(v) != 2 for v in spacings) \
            or np.ptp(np.array(spacings), axis=0).max() > 1e-4:
        raise unsupported
    return iops, ipps, scaling, spacings[0]


def _single_frames_geometry(datasets, files: list[Path], label: str):
    """IOP, IPP, (slope, intercept) per file and the common pixel spacing of a classic one-file-per-slice series."""
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in datasets}
    if len(sizes) > 1:
        raise IvdsegError(f"{label} mixes image sizes {sorted(sizes)} in one series; choose a series whose "
                          "images all have the same size.")
    iops, ipps = [], []
    for path, ds in zip(files, datasets):
        iop, ipp = plane_geometry(ds)
        if iop is None:
            raise IvdsegError(f"{path} has no ImageOrientationPatient/ImagePositionPatient, so its place in "
                              "space is unknown; choose an MRI series with geometry.")
        iops.append(iop)
        ipps.append(ipp)
    spacing_values = {tuple(float(v) for v in ds.get("PixelSpacing") or ()) for ds in datasets}
    pixel_spacing = next(iter(spacing_values))
    if len(spacing_values) > 1 or len(pixel_spacing) != 2:
        raise IvdsegError(f"{label} has missing or differing PixelSpacing between slices; choose a series "
                          "with one pixel spacing.")
    return iops, ipps, [_slope_intercept(ds) for ds in datasets], pixel_spacing


def read_series(folder_or_files, series_uid: str | None = None) -> Volume:
    """Reads one DICOM image series as a volume.

    Args:
        folder_or_files: a folder (searched recursively), one file, or a list of files.
        series_uid: the SeriesInstanceUID to read; needed when there are several image series.

    Returns:
        A :class:`Volume`: array (K, J, I) = (slices sorted along the normal, Rows, Columns); ijk_to_ras in RAS,
        i along the row cosine IOP[0:3] x PixelSpacing[1], j along IOP[3:6] x PixelSpacing[0], k along the normal
        x the median slice spacing, origin = the first slice's ImagePositionPatient. Rescale slope/intercept are
        applied (float32 where they are not integral).

    Raises:
        IvdsegError: no DICOM or no image series, several series and no ``series_uid``, a damaged file of the
            chosen series (damaged files of other or unknown series are skipped with an IvdsegWarning), colour
            images, differing sizes or orientations, a missing slice or uneven spacing, no geometry tags, or an
            unsupported multi-frame file.
    """
    series, label, n_non_image, damaged = scan_files(folder_or_files)
    info = _choose(series, series_uid, label, n_non_image, damaged)
    own = [d for d in damaged if d.series_uid == info.series_uid]
    if own:
        raise IvdsegError(f"{own[0].path} is a damaged DICOM file of the chosen series ({own[0].reason}); "
                          "remove it or copy the series again.")
    warn_skipped(damaged, label)
    unknown = [d.path.name for d in damaged if d.series_uid is None]
    label = str(info.files[0].parent) if len(info.files) > 1 else str(info.files[0])
    datasets, pixels = zip(*(_read_full(path) for path in info.files))
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds for ds in datasets):
        if len(datasets) != 1:
            raise IvdsegError(f"{label} holds several multi-frame files in one series; multi-frame is not "
                              "supported, so convert it to single-frame files first.")
        iops, ipps, scaling, pixel_spacing = _frames_geometry(datasets[0], info.files[0])
        slices = list(pixels[0].reshape((-1,) + pixels[0].shape[-2:]))
        if len(slices) != len(iops):
            raise IvdsegError(f"{label} has {len(slices)} frames but {len(iops)} frame descriptions; "
                              "the file is damaged.")
    else:
        iops, ipps, scaling, pixel_spacing = _single_frames_geometry(datasets, info.files, label)
        slices = list(pixels)
    if np.abs(np.array(iops) - np.array(iops[0])).max() > 1e-3:
        raise IvdsegError(f"{label} mixes slice orientations in one series (a localizer?); choose a series whose "
                          "slices are parallel.")
    if orientation_name(iops[0]) == "unknown":
        raise IvdsegError(f"{label} has a degenerate ImageOrientationPatient; the file is damaged.")
    normal = slice_normal(iops[0])
    positions = np.array([np.dot(ipp, normal) for ipp in ipps])
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    ipps = np.array(ipps)[order]
    # A skipped file of unknown series may have been one of these slices: the gap check then names it.
    slice_spacing = _spacing(positions, datasets[0], label,
                             f" (skipped as damaged: {', '.join(unknown[:3])})" if unknown else "")
    drift = (ipps[-1] - ipps[0]) - (positions[-1] - positions[0]) * normal
    if np.linalg.norm(drift) > 0.5 * min(pixel_spacing):
        raise IvdsegError(f"{label} has slices that shift sideways along the stack (tilted or sheared "
                          "acquisition); resample it to an orthogonal grid first.")
    array = _rescale([slices[n] for n in order], [scaling[n][0] for n in order], [scaling[n][1] for n in order])
    return Volume(array=np.ascontiguousarray(array),
                  ijk_to_ras=_matrix(iops[0], ipps[0], pixel_spacing, normal, slice_spacing))
