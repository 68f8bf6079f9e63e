"""Indexing a folder of DICOM files: which image series it holds, their files sorted along the slice normal.

Headers only are read (``stop_before_pixels=True``). Slices are ordered by projecting ImagePositionPatient onto the
slice normal (the cross product of the two ImageOrientationPatient direction cosines), never by file name or
InstanceNumber. A damaged file is recorded, not fatal: :mod:`ivdseg.io.dicom` refuses it only when it belongs to
the series being read.
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


def slice_normal(iop) -> np.ndarray:
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


def plane_geometry(ds):
    """(IOP, IPP) of a single-frame dataset or (None, None)."""
    iop, ipp = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
    if iop is None or ipp is None or len(iop) != 6 or len(ipp) != 3:
        return None, None
    return [float(v) for v in iop], [float(v) for v in ipp]


def scan_files(source) -> tuple[list[SeriesInfo], str, int, list[DamagedFile]]:
    """Reads all headers of a folder (recursively), one file or a list of files.

    Returns:
        (image series, a label for messages (the folder or first file), the count of DICOM files without pixels,
        the damaged files: left to the caller, which knows which series is wanted).
    """
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


def warn_skipped(damaged: list[DamagedFile], label: str) -> None:
    """One warning for all damaged files that were skipped (one line on the command line, however many)."""
    if not damaged:
        return
    names = ", ".join(f"{d.path.name} ({d.reason})" for d in damaged[:3])
    more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
    warnings.warn(IvdsegWarning(f"{label}: skipped {len(damaged)} damaged DICOM file(s) outside the chosen series "
                                f"or of unknown series: {names}{more}."), stacklevel=3)


def _header_iop(ds):
    """ImageOrientationPatient of a header, looked up in the functional groups for an enhanced multi-frame file."""
    iop, _ = plane_geometry(ds)
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
    normal = slice_normal(iop0) if orientation_name(iop0) != "unknown" else None
    positioned = []
    for path, ds in members:
        _, ipp = plane_geometry(ds)
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
    series, label, _, damaged = scan_files(folder)
    warn_skipped(damaged, label)
    return sorted(series, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
