"""Indexing a folder of DICOM files and reading one image series as a :class:`~ivdseg.volume.Volume`.

Slices are ordered by projecting ImagePositionPatient onto the slice normal (the cross product of the two
ImageOrientationPatient direction cosines), never by file name or InstanceNumber. DICOM patient coordinates are
LPS; the volume's matrix is RAS, as in Slicer.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ivdseg.errors import IvdsegError, IvdsegWarning
from ivdseg.io.geometry import Volume

_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


@dataclass
class SeriesInfo:
    """One image series found by :func:`index_folder`.

    ``files`` are sorted along the slice normal; ``positions_mm`` is each file's position along that normal
    (None where a file has no geometry). ``patient_id`` is kept in memory only (and out of the repr) so that it
    never reaches a log or an exported dataset by accident.
    """

    series_uid: str
    description: str
    modality: str
    n_files: int
    n_slices: int
    orientation: str  # "sagittal" | "coronal" | "axial" | "oblique" | "unknown"
    rows: int
    columns: int
    files: list[Path] = field(repr=False)
    study_uid: str = ""
    patient_id: str = field(default="", repr=False)
    series_number: int | None = None
    number_of_frames: int = 1
    positions_mm: list[float | None] = field(default_factory=list, repr=False)


def orientation_name(iop, oblique_deg: float = 20.0) -> str:
    """Names the plane of an ImageOrientationPatient: the body axis nearest to its normal, or "oblique".

    Args:
        iop: 6 direction cosines (row direction, column direction), LPS.
        oblique_deg: a normal further than this from every body axis is "oblique".

    Returns:
        "sagittal", "coronal", "axial", "oblique", or "unknown" when ``iop`` is missing or degenerate.
    """
    if iop is None or len(iop) != 6:
        return "unknown"
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    norm = np.linalg.norm(normal)
    if norm < 1e-3:
        return "unknown"
    cosines = np.abs(normal) / norm
    axis = int(np.argmax(cosines))
    if np.degrees(np.arccos(min(cosines[axis], 1.0))) > oblique_deg:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def _normal(iop) -> np.ndarray:
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    return normal / np.linalg.norm(normal)


@dataclass
class DamagedFile:
    """A file that claims to be DICOM but whose header cannot be read whole.

    ``series_uid`` is the SeriesInstanceUID its readable part names, or None when that part ends before the tag.
    """

    path: Path
    reason: str
    series_uid: str | None = None


def _partial_series_uid(path: Path) -> str | None:
    """The SeriesInstanceUID of a damaged file, reading no further than that tag (damage beyond it is harmless)."""
    from pydicom.filereader import read_partial

    try:
        with open(path, "rb") as fh:
            ds = read_partial(fh, stop_when=lambda tag, vr, length: tag > 0x0020000E)
        uid = ds.get("SeriesInstanceUID")
    except Exception:  # noqa: BLE001  (any failure only means the series cannot be told)
        return None
    return str(uid) if uid else None


def _read_header(path: Path):
    """The dataset without pixels, None when the file is not DICOM, or a :class:`DamagedFile`."""
    if path.name.upper() == "DICOMDIR":
        return None
    try:
        with warnings.catch_warnings():  # pydicom's own warnings about the damage: the DamagedFile says it once
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except InvalidDicomError:
        return None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return DamagedFile(path, str(exc) or type(exc).__name__, _partial_series_uid(path))
    if "DirectoryRecordSequence" in ds:  # a DICOMDIR under another name
        return None
    # pydicom stops quietly at the end of a truncated file; an image class without its image tags gives it away.
    sop_class = getattr(ds, "file_meta", pydicom.Dataset()).get("MediaStorageSOPClassUID")
    is_image_class = sop_class is not None and "Image Storage" in getattr(sop_class, "name", "")
    if len(ds) == 0 or (is_image_class and ("Rows" not in ds or "Columns" not in ds)):
        uid = ds.get("SeriesInstanceUID")
        return DamagedFile(path, "it ends before its image tags", str(uid) if uid else _partial_series_uid(path))
    return ds


def _files_of(source) -> tuple[list[Path], str]:
    """The candidate files and a label for messages (the folder, or the first file)."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.exists():
            raise IvdsegError(f"{folder} does not exist; give the folder that holds the DICOM series.")
        if not folder.is_dir():
            return [folder], str(folder)
        files = sorted(Path(root) / name for root, _, names in os.walk(folder) for name in names)
        return files, str(folder)
    files = [Path(p) for p in source]
    if not files:
        raise IvdsegError("No DICOM files were given; pass a folder or a list of files.")
    for path in files:
        if not path.is_file():
            raise IvdsegError(f"{path} does not exist or is not a file; check the path.")
    label = str(files[0].parent) if len(files) > 1 else str(files[0])
    return files, label


def _geometry(ds):
    """(IOP, IPP) of a single-frame dataset or (None, None)."""
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is None or ipp is None or len(iop) != 6 or len(ipp) != 3:
        return None, None
    return [float(v) for v in iop], [float(v) for v in ipp]


def _scan(source) -> tuple[list[SeriesInfo], str, int, list[DamagedFile]]:
    """Reads all headers; returns image series, the label for messages, the count of non-image DICOM files and
    the damaged files (left to the caller, which knows which series is wanted)."""
    files, label = _files_of(source)
    groups: dict[str, list[tuple[Path, object]]] = {}
    n_non_image = 0
    damaged = []
    for path in files:
        ds = _read_header(path)
        if ds is None:
            continue
        if isinstance(ds, DamagedFile):
            damaged.append(ds)
            continue
        if "Rows" not in ds or "Columns" not in ds:  # SR, presentation states, ...: no pixels
            n_non_image += 1
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    return [_series_info(uid, members) for uid, members in groups.items()], label, n_non_image, damaged


def _warn_skipped(damaged: list[DamagedFile], label: str) -> None:
    """One warning for all damaged files that were skipped (one line on the command line, however many)."""
    if not damaged:
        return
    names = ", ".join(f"{d.path.name} ({d.reason})" for d in damaged[:3])
    more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
    warnings.warn(IvdsegWarning(f"{label}: skipped {len(damaged)} damaged DICOM file(s) outside the chosen series "
                                f"or of unknown series: {names}{more}."), stacklevel=3)


def _header_iop(ds):
    """ImageOrientationPatient of a header, looked up in the functional groups for an enhanced multi-frame file."""
    iop, _ = _geometry(ds)
    if iop is not None:
        return iop
    for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(keyword)
        if groups and "PlaneOrientationSequence" in groups[0] and len(groups[0].PlaneOrientationSequence):
            value = groups[0].PlaneOrientationSequence[0].get("ImageOrientationPatient")
            if value is not None and len(value) == 6:
                return [float(v) for v in value]
    return None


def _series_info(uid: str, members) -> SeriesInfo:
    first = members[0][1]
    iop0 = _header_iop(first)
    normal = _normal(iop0) if orientation_name(iop0) != "unknown" else None
    positioned = []
    for path, ds in members:
        _, ipp = _geometry(ds)
        position = float(np.dot(ipp, normal)) if normal is not None and ipp is not None else None
        positioned.append((position, str(path), path, ds))
    positioned.sort(key=lambda t: (t[0] is None, t[0] or 0.0, t[1]))  # the path only breaks ties
    orientations = {None if iop is None else tuple(np.round(iop, 3)) for iop in (_header_iop(t[3]) for t in positioned)}
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for *_, ds in positioned)
    distinct = {round(p, 3) for p, *_ in positioned if p is not None}
    number = first.get("SeriesNumber")
    return SeriesInfo(
        series_uid=uid, description=str(first.get("SeriesDescription", "")), modality=str(first.get("Modality", "")),
        n_files=len(members), n_slices=len(distinct) if frames == len(members) and distinct else frames,
        orientation=orientation_name(iop0) if len(orientations) == 1 else "unknown",
        rows=int(first.Rows), columns=int(first.Columns), files=[t[2] for t in positioned],
        study_uid=str(first.get("StudyInstanceUID", "")), patient_id=str(first.get("PatientID", "")),
        series_number=int(number) if number not in (None, "") else None, number_of_frames=frames,
        positions_mm=[t[0] for t in positioned],
    )


def index_folder(folder) -> list[SeriesInfo]:
    """Finds the DICOM image series under a folder, recursively.

    Headers only are read (``stop_before_pixels=True, force=False``); non-DICOM files and DICOMDIR are skipped
    silently, files without pixels (structured reports, ...) are not image series, and damaged DICOM files are
    skipped with one :class:`~ivdseg.errors.IvdsegWarning` naming them, so one bad file does not hide the others.

    Args:
        folder: a folder (searched recursively) or one DICOM file.

    Returns:
        One :class:`SeriesInfo` per SeriesInstanceUID, ordered by series number then UID; empty if none.

    Raises:
        IvdsegError: the folder does not exist.
    """
    series, label, _, damaged = _scan(folder)
    _warn_skipped(damaged, label)
    return sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))


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
        iop, ipp = _geometry(ds)
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
    series, label, n_non_image, damaged = _scan(folder_or_files)
    info = _choose(series, series_uid, label, n_non_image, damaged)
    own = [d for d in damaged if d.series_uid == info.series_uid]
    if own:
        raise IvdsegError(f"{own[0].path} is a damaged DICOM file of the chosen series ({own[0].reason}); "
                          "remove it or copy the series again.")
    _warn_skipped(damaged, label)
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
    normal = _normal(iops[0])
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
