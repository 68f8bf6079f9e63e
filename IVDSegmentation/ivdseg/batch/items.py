"""What a batch segments: every series of a folder tree, or the rows of a manifest, each with a stable output name.

A folder tree gives every DICOM image series in it (found by :func:`ivdseg.io.dicom_index.index_folder`, named by
its SeriesInstanceUID) and every NIfTI / NRRD file (named by its path below the tree, so the same file keeps its
name in every run). A manifest is a CSV with the columns ``input`` and ``output``: ``input`` a volume file or a
DICOM folder, ``output`` the result's path (relative paths are below OUTDIR), optionally ``series`` for a folder
holding several series.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ivdseg.errors import IvdsegError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")
OUTPUT_FORMATS = (".nii.gz", ".nrrd", ".seg.nrrd", ".dcm")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class BatchItem:
    """One series of a batch.

    Attributes:
        key: its stable name in the journal and the results (a SeriesInstanceUID, a relative path, a manifest's
            output).
        input: the volume file, or the DICOM folder the series was found in.
        output: where its result goes.
        files: for a DICOM series, its files (the worker reads these, never the whole tree again).
        series_uid: for a DICOM series, its SeriesInstanceUID.
        patient_id: the DICOM PatientID where known (pseudonymised before it reaches any table when asked).
    """

    key: str
    input: str
    output: str
    files: list[str] = field(default_factory=list)
    series_uid: str | None = None
    patient_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def stamp(self) -> str:
        """Size and modification time of the input's files: a re-run redoes a series whose input changed."""
        paths = [Path(f) for f in self.files] or [Path(self.input)]
        if len(paths) == 1 and paths[0].is_dir():
            paths = sorted(p for p in paths[0].rglob("*") if p.is_file())
        stats = [p.stat() for p in paths if p.exists()]
        return f"{len(stats)}:{sum(s.st_size for s in stats)}:{max((s.st_mtime_ns for s in stats), default=0)}"


def _volume_files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        name = path.name.lower()
        if path.is_file() and name.endswith(VOLUME_SUFFIXES) and not name.endswith(".seg.nrrd"):
            out.append(path)
    return out


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def tree_items(root, outdir, suffix: str) -> list[BatchItem]:
    """Every DICOM series and volume file below ``root``, each with its output in ``outdir``.

    Raises:
        IvdsegError: ``root`` is not a folder, or holds nothing to segment.
    """
    from ivdseg.io.dicom_index import index_folder

    root, outdir = Path(root).resolve(), Path(outdir).resolve()
    if not root.is_dir():
        raise IvdsegError(f"{root} is not a folder; give a folder tree of DICOM series and volumes, or a CSV manifest.")
    items = []
    for series in index_folder(root):
        folder = Path(series.files[0]).parent if series.files else root
        if series.modality == "SEG" or _within(folder, outdir):  # our own results, when OUTDIR is inside INPUT
            continue
        items.append(BatchItem(key=series.series_uid, input=str(folder), files=[str(f) for f in series.files],
                               output=str(outdir / f"{_UNSAFE.sub('_', series.series_uid)}{suffix}"),
                               series_uid=series.series_uid, patient_id=series.patient_id))
    for path in _volume_files(root):
        if _within(path, outdir):
            continue
        relative = _strip_suffix(path.relative_to(root).as_posix())
        items.append(BatchItem(key=relative, input=str(path), output=str(outdir / f"{relative}{suffix}")))
    if not items:
        raise IvdsegError(f"{root} holds no DICOM image series and no .nii, .nii.gz or .nrrd file.")
    return items


def manifest_items(manifest, outdir) -> list[BatchItem]:
    """The rows of a CSV manifest (``input,output[,series]``).

    Raises:
        IvdsegError: the file is unreadable, lacks a column, or has a row without an input or an output.
    """
    manifest, outdir = Path(manifest).resolve(), Path(outdir).resolve()
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in ("input", "output") if c not in (reader.fieldnames or [])]
            if missing:
                raise IvdsegError(f"The manifest {manifest} lacks the column(s) {', '.join(missing)}; it needs "
                                  "input,output (and optionally series).")
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise IvdsegError(f"The manifest {manifest} cannot be read ({exc}).") from None
    items = []
    for line, row in enumerate(rows, start=2):
        source, target = (row.get("input") or "").strip(), (row.get("output") or "").strip()
        if not source or not target:
            raise IvdsegError(f"Line {line} of {manifest} has no {'input' if not source else 'output'}.")
        source_path = Path(source) if Path(source).is_absolute() else manifest.parent / source
        output = Path(target) if Path(target).is_absolute() else outdir / target
        items.append(BatchItem(key=target, input=str(source_path), output=str(output),
                               series_uid=(row.get("series") or "").strip() or None))
    if not items:
        raise IvdsegError(f"The manifest {manifest} lists no series.")
    return items


def find_items(source, outdir, suffix: str = ".nii.gz") -> list[BatchItem]:
    """The items of a folder tree or a manifest (a ``.csv`` file), checked for outputs named twice.

    Raises:
        IvdsegError: an unknown output format, no input, or two series with one output.
    """
    if suffix not in OUTPUT_FORMATS:
        raise IvdsegError(f"--format must be one of {', '.join(OUTPUT_FORMATS)}, not {suffix!r}.")
    source = Path(source)
    if not source.exists():
        raise IvdsegError(f"{source} does not exist; give a folder tree or a CSV manifest.")
    items = manifest_items(source, outdir) if source.suffix.lower() == ".csv" else tree_items(source, outdir, suffix)
    seen: dict[str, str] = {}
    for item in items:
        resolved = str(Path(item.output).resolve())
        if resolved in seen:
            raise IvdsegError(f"{item.key} and {seen[resolved]} would both be written to {item.output}; give them "
                              "different outputs.")
        seen[resolved] = item.key
    if suffix == ".dcm":
        not_dicom = next((i for i in items if not i.files and not Path(i.input).is_dir()), None)
        if not_dicom is not None:
            raise IvdsegError(f"{not_dicom.input} is not DICOM, so it cannot have a DICOM SEG; choose another --format.")
    return items
