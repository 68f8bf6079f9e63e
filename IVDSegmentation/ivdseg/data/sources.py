"""Dataset sources: image + label pairs (2D slices, volumes, explicit pairs) and RLE mask tables read into
:class:`RawCase` objects, the in-memory form that :func:`ivdseg.data.export.export_dataset` de-identifies and writes.

Identifiers (patient IDs, file names) stay in these objects, in memory only.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ivdseg.data.sample_data import expand
from ivdseg.errors import IvdsegError

SOURCE_KINDS = ("slices", "volumes", "pairs", "rle_csv")
# How the rows and columns of a case's slices lie; dataset.json and the model card say it.
SLICE_AXES = {"sagittal": "rows superior->inferior, columns anterior->posterior",
              "as stored": "rows and columns as the source's 2D images store them"}


@dataclass
class RawCase:
    """One series in memory, before de-identification.

    Attributes:
        patient: the source's patient identifier (hashed before anything is written).
        source: name of the source (hospital, data set), kept as the validation stratum.
        image: (N, H, W) slices as ``slice_plane`` says (sagittal: rows superior->inferior, columns
            anterior->posterior).
        label: (N, H, W) uint8 in the OUTPUT classes: class values (0 = background), or one bit per class in an
            overlapping export (:mod:`ivdseg.data.labels`).
        pixel_spacing_mm: (row, col) spacing, NaN where unknown (e.g. PNG).
        slice_spacing_mm: spacing between slices, NaN where unknown.
        origin: where it came from, for error messages only (never written).
        order_key: sorts the patients before the seeded shuffle of the split (default: source + patient), so
            that one seed gives one split whatever the pseudonym key; in memory only.
        labelled_classes: the output class names this series' source labels; None: all of them. A class it
            does not label is unknown in it, not background (training masks it out of the loss).
        slice_plane: "sagittal" (spine sources, resliced) or "as stored" (2D images as given, e.g. axial
            abdominal MRI slices of an RLE table); one dataset holds one plane.
        slice_order: how the source ordered the slices, when it says (e.g. "slice number"); written per case.
        missing_slices: slices absent between the first and the last of the series (gaps in the numbering);
            with ``slice_order``, tells training whether neighbours in the stack are neighbours in the body.
    """

    patient: str
    source: str
    image: np.ndarray
    label: np.ndarray
    pixel_spacing_mm: tuple = (float("nan"), float("nan"))
    slice_spacing_mm: float = float("nan")
    origin: str = ""
    order_key: str = ""
    labelled_classes: tuple[str, ...] | None = None
    slice_plane: str = "sagittal"
    slice_order: str = ""
    missing_slices: int = 0


@dataclass
class SourceSpec:
    """Where one source's pairs are and how its labels map to the output classes.

    Attributes:
        name: source name (stratum of the split; must not identify a patient).
        kind: "slices" (2D PNG/.npy files, each one slice), "volumes" (NIfTI, NRRD, DICOM folder: found by the
            ``images`` glob), "pairs" (an explicit list, ``pairs``: what the Slicer training panel writes) or
            "rle_csv" (a table of RLE masks and an image per id: :mod:`ivdseg.data.rle_source`).
        images: glob of image files (or DICOM folders), relative to ``root``.
        labels: label path template relative to ``root``: ``{stem}`` = image name without extension,
            ``{patient}`` = the patient pattern's first group, ``{name}`` = image file name.
        class_map: output class name -> source label values that form it (e.g. {"disc": [2]}); for "rle_csv",
            the table's class names instead (e.g. {"large bowel": ["large_bowel"]}).
        patient_pattern: regex searched in the image file name; group 1 is the patient. Default:
            each image is its own patient (DICOM: the PatientID tag).
        root: folder the globs and pair paths are relative to.
        pairs: for kind "pairs": ``{"image": path, "label": path, "patient": id, "order": sort key}`` per series;
            the patient id is used as given (the Slicer side passes a keyed hash, never the DICOM PatientID).
        table: for kind "rle_csv": the table's settings (:class:`ivdseg.data.rle_source.RleTable`).
        unannotated: for kinds "slices" and "volumes": image paths (relative to ``root``) whose label file is empty
            because nobody drew it, though the image shows the classes: exported with no class labelled, so that
            training never teaches what they show as background and evaluation does not score them. (A slice
            beyond the anatomy, truly empty, is a negative and stays labelled.)
    """

    name: str
    kind: str
    images: str
    labels: str
    class_map: dict[str, list]
    patient_pattern: str | None = None
    root: Path = field(default_factory=Path)
    pairs: list[dict] = field(default_factory=list)
    table: object = None
    unannotated: tuple = ()

    @classmethod
    def from_dict(cls, d: dict, root: Path) -> "SourceSpec":
        if not isinstance(d, dict):
            raise IvdsegError(f"A source in the export spec is {type(d).__name__}, not a JSON object.")
        kind = d.get("kind")
        needed = {"name", "kind", "classes"} | {"pairs": {"pairs"}, "rle_csv": set()}.get(kind, {"images", "labels"})
        missing = needed - set(d)
        if missing:
            raise IvdsegError(f"A source in the export spec lacks {sorted(missing)}.")
        if kind not in SOURCE_KINDS:
            raise IvdsegError(f"Source {d['name']!r}: kind must be one of {', '.join(map(repr, SOURCE_KINDS))}, "
                              f"not {kind!r}.")
        if kind == "rle_csv":
            from ivdseg.data.rle_source import RleTable

            table = RleTable.from_dict(d)
            return cls(name=d["name"], kind=kind, images="", labels="", class_map=table.class_map,
                       root=root / expand(d.get("root", ".")), table=table)
        classes = d["classes"]
        if not isinstance(classes, dict) or not all(
                isinstance(values, list) and values and all(isinstance(v, int) and not isinstance(v, bool) for v in values)
                for values in classes.values()):
            raise IvdsegError(f"Source {d['name']!r}: 'classes' must map each class name to a list of integer label "
                              f"values, e.g. {{\"intervertebral disc\": [2]}}.")
        unannotated = d.get("unannotated", [])
        if not isinstance(unannotated, list) or not all(isinstance(u, str) and u for u in unannotated):
            raise IvdsegError(f"Source {d['name']!r}: 'unannotated' must be a list of image paths relative to its "
                              "root.")
        if unannotated and kind not in ("slices", "volumes"):
            raise IvdsegError(f"Source {d['name']!r}: 'unannotated' applies to sources of kind 'slices' or "
                              f"'volumes', not {kind!r}.")
        pairs = d.get("pairs") or []
        if not isinstance(pairs, list):
            raise IvdsegError(f"Source {d['name']!r}: 'pairs' must be a list.")
        for n, pair in enumerate(pairs):
            if not isinstance(pair, dict) or not {"image", "label", "patient"} <= set(pair):
                raise IvdsegError(f"Pair {n} of source {d['name']!r} needs 'image', 'label' and 'patient'.")
        return cls(name=d["name"], kind=kind, images=d.get("images", ""), labels=d.get("labels", ""),
                   class_map={k: list(vals) for k, vals in classes.items()},
                   patient_pattern=d.get("patient_pattern"),
                   root=root / expand(d.get("root", ".")), pairs=list(pairs), unannotated=tuple(unannotated))


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".nhdr", ".png", ".npy", ".dcm"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _patient_of(path: Path, pattern: str | None) -> str | None:
    if not pattern:
        return None
    m = re.search(pattern, path.name)
    if not m:
        raise IvdsegError(f"{path} does not match the patient pattern {pattern!r}; fix the pattern.")
    return m.group(1) if m.groups() else m.group(0)


def _label_path(spec: SourceSpec, image: Path, patient: str | None) -> Path:
    rel = spec.labels.format(stem=_stem(image), patient=patient or _stem(image), name=image.name)
    return spec.root / rel


def map_classes(label: np.ndarray, class_map: dict[str, list[int]], classes: list[str], origin="",
                overlapping: bool = False) -> np.ndarray:
    """Source label values -> output labels (``classes`` lists foreground names; class c = index + 1).

    Values not named in ``class_map`` become background, e.g. keep only label 2 of a
    vertebra/disc/canal mask as "intervertebral disc".

    Args:
        label: (...) source label values.
        class_map: output class name -> source values that form it.
        classes: output class names without background.
        origin: the label's file, for the error message.
        overlapping: write one bit per class (bit c - 1 for class c), so that two classes sharing source values
            both keep them; else class values (a value claimed by two classes goes to the later one).

    Returns:
        (...) uint8.
    """
    out = np.zeros(label.shape, np.uint8)
    for name, values in class_map.items():
        if name not in classes:
            raise IvdsegError(f"Class {name!r} of {origin or 'a source'} is not among the output classes {classes}.")
        if overlapping:
            out[np.isin(label, values)] |= np.uint8(1 << classes.index(name))
        else:
            out[np.isin(label, values)] = classes.index(name) + 1
    return out


def _read_2d(path: Path, is_label: bool) -> np.ndarray:
    import cv2

    if path.suffix.lower() == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise IvdsegError(f"{path} cannot be read without pickle ({exc}); save it as a plain numeric .npy.") from None
    else:
        flag = cv2.IMREAD_UNCHANGED
        arr = cv2.imread(str(path), flag)
        if arr is None:
            raise IvdsegError(f"{path} is missing or not an image OpenCV can read.")
    if arr.ndim == 3:
        if is_label or not np.allclose(arr[..., 0], arr[..., 1]) or not np.allclose(arr[..., 1], arr[..., 2]):
            raise IvdsegError(f"{path} has {arr.shape[2]} channels; a greyscale image and a single-channel label map are needed.")
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise IvdsegError(f"{path} has shape {arr.shape}; a 2D slice is needed.")
    return arr


def _source_files(spec: SourceSpec) -> tuple[list[Path], set[Path]]:
    """The files of the ``images`` glob in natural order, and those of them the spec lists as unannotated.

    Raises:
        IvdsegError: an unannotated entry that the glob does not find (a typo would otherwise go unnoticed).
    """
    files = sorted((Path(p) for p in glob.glob(str(spec.root / spec.images))), key=_natural_key)
    found = {f.resolve(): f for f in files}
    unannotated = set()
    for entry in spec.unannotated:
        match = found.get((spec.root / entry).resolve())
        if match is None:
            raise IvdsegError(f"Source {spec.name!r} lists {entry!r} as unannotated, but its images glob "
                              f"{spec.images!r} does not find it.")
        unannotated.add(match)
    return files, unannotated


def _iter_slices(spec: SourceSpec, classes: list[str], overlapping: bool) -> Iterator[RawCase]:
    files, unannotated = _source_files(spec)
    by_patient: dict[str, list[Path]] = {}
    for f in files:
        by_patient.setdefault(_patient_of(f, spec.patient_pattern) or _stem(f), []).append(f)
    for patient, paths in by_patient.items():
        groups: dict[tuple, tuple[list, list]] = {}  # (shape, annotated) -> images, labels: one case each
        for p in paths:
            image = _read_2d(p, is_label=False)
            lab_path = _label_path(spec, p, patient)
            label = _read_2d(lab_path, is_label=True)
            if label.shape != image.shape:
                raise IvdsegError(f"{lab_path} is {label.shape[1]}x{label.shape[0]} but its image {p.name} is "
                                  f"{image.shape[1]}x{image.shape[0]}; label and image must match.")
            g = groups.setdefault((image.shape, p not in unannotated), ([], []))
            g[0].append(image)
            g[1].append(map_classes(label, spec.class_map, classes, str(lab_path), overlapping))
        for (_, annotated), (imgs, labs) in groups.items():
            yield RawCase(patient=patient, source=spec.name, image=np.stack(imgs), label=np.stack(labs),
                          origin=str(paths[0].parent), labelled_classes=tuple(spec.class_map) if annotated else ())


def _iter_volumes(spec: SourceSpec, classes: list[str], overlapping: bool) -> Iterator[RawCase]:
    files, unannotated = _source_files(spec)
    for path in files:
        patient = _patient_of(path, spec.patient_pattern)
        if patient is None and path.is_dir():
            from ivdseg.io.dicom_index import index_folder

            ids = {s.patient_id for s in index_folder(path)}
            patient = sorted(ids)[0] if ids else None
        patient = patient or _stem(path)
        case = _volume_case(spec, classes, overlapping, path, _label_path(spec, path, patient), patient)
        if path in unannotated:
            case.labelled_classes = ()
        yield case


def _iter_pairs(spec: SourceSpec, classes: list[str], overlapping: bool) -> Iterator[RawCase]:
    for pair in spec.pairs:
        yield _volume_case(spec, classes, overlapping, spec.root / pair["image"], spec.root / pair["label"],
                           str(pair["patient"]), order_key=str(pair.get("order", "")))


def _volume_case(spec: SourceSpec, classes, overlapping: bool, image_path: Path, label_path: Path, patient: str,
                 order_key: str = "") -> RawCase:
    from ivdseg.io.geometry import sagittal_slices
    from ivdseg.io.volumes import read_volume

    image = read_volume(image_path)
    label = read_volume(label_path)
    check_same_geometry(image, label, label_path)
    img_slices, mapping = sagittal_slices(image)
    lab_slices, _ = sagittal_slices(label)
    return RawCase(patient=patient, source=spec.name, image=img_slices,
                   label=map_classes(np.rint(lab_slices).astype(np.int64), spec.class_map, classes, str(label_path),
                                     overlapping),
                   pixel_spacing_mm=tuple(float(s) for s in mapping.pixel_spacing_mm),
                   slice_spacing_mm=float(mapping.slice_spacing_mm), origin=str(image_path), order_key=order_key,
                   labelled_classes=tuple(spec.class_map))


def check_same_geometry(image, label, label_path, atol_mm=1e-3) -> None:
    """Raises IvdsegError when a label volume's grid differs from its image's."""
    if image.array.shape != label.array.shape:
        raise IvdsegError(f"{label_path} has {label.array.shape[::-1]} voxels but its image has "
                          f"{image.array.shape[::-1]}; the label must share the image's geometry.")
    if not np.allclose(image.ijk_to_ras, label.ijk_to_ras, atol=atol_mm):
        raise IvdsegError(f"{label_path} has another origin, spacing or orientation than its image; "
                          "resample the label onto the image first.")


def iter_source_cases(spec: SourceSpec, classes: list[str], overlapping: bool = False) -> Iterator[RawCase]:
    """Reads a source's pairs as RawCases (labels already mapped to ``classes``).

    Args:
        spec: the source.
        classes: output class names without background.
        overlapping: the export keeps overlapping classes: labels hold one bit per class (:mod:`ivdseg.data.labels`).

    Raises:
        IvdsegError: the source finds nothing; an RLE table whose rows are malformed (checked before the first case).
    """
    if spec.kind == "rle_csv":
        from ivdseg.data.rle_source import iter_rle_cases

        return iter_rle_cases(spec, classes, overlapping)
    if spec.kind == "pairs":
        if not spec.pairs:
            raise IvdsegError(f"Source {spec.name!r} lists no pairs.")
        return _iter_pairs(spec, classes, overlapping)
    if not glob.glob(str(spec.root / spec.images)):
        raise IvdsegError(f"No image matches {spec.root / spec.images} (source {spec.name!r}).")
    reader = _iter_slices if spec.kind == "slices" else _iter_volumes
    return reader(spec, classes, overlapping)
