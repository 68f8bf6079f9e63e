"""Dataset export: image + label pairs (volumes or 2D slices) or RLE mask tables -> the de-identified dataset folder.

Two stages, so that the Slicer training panel can feed nodes instead of files:
``iter_source_cases(spec)`` reads files into :class:`RawCase` objects, ``export_dataset`` writes them.
Identifiers (patient IDs, file names) live only in memory: patients become keyed-hash pseudonyms
whose key is never written, and no path, name, date or UID goes into any exported file.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.data.labels import MAX_OVERLAPPING_CLASSES, class_masks
from ivdseg.errors import IvdsegError
from ivdseg.data.splits import split_patients, stratified_group_kfold
from ivdseg.io.atomic import atomic_write, write_json
from ivdseg.data.preprocess import RESIZE_MODES, resize_stack
from ivdseg.data.sample_data import expand

ProgressFn = Callable[[int, int, str], None]
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
        pairs = d.get("pairs") or []
        if not isinstance(pairs, list):
            raise IvdsegError(f"Source {d['name']!r}: 'pairs' must be a list.")
        for n, pair in enumerate(pairs):
            if not isinstance(pair, dict) or not {"image", "label", "patient"} <= set(pair):
                raise IvdsegError(f"Pair {n} of source {d['name']!r} needs 'image', 'label' and 'patient'.")
        return cls(name=d["name"], kind=kind, images=d.get("images", ""), labels=d.get("labels", ""),
                   class_map={k: list(vals) for k, vals in classes.items()},
                   patient_pattern=d.get("patient_pattern"),
                   root=root / expand(d.get("root", ".")), pairs=list(pairs))


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


def _iter_slices(spec: SourceSpec, classes: list[str], overlapping: bool) -> Iterator[RawCase]:
    files = sorted((Path(p) for p in glob.glob(str(spec.root / spec.images))), key=_natural_key)
    by_patient: dict[str, list[Path]] = {}
    for f in files:
        by_patient.setdefault(_patient_of(f, spec.patient_pattern) or _stem(f), []).append(f)
    for patient, paths in by_patient.items():
        groups: dict[tuple, tuple[list, list]] = {}
        for p in paths:
            image = _read_2d(p, is_label=False)
            lab_path = _label_path(spec, p, patient)
            label = _read_2d(lab_path, is_label=True)
            if label.shape != image.shape:
                raise IvdsegError(f"{lab_path} is {label.shape[1]}x{label.shape[0]} but its image {p.name} is "
                                  f"{image.shape[1]}x{image.shape[0]}; label and image must match.")
            g = groups.setdefault(image.shape, ([], []))
            g[0].append(image)
            g[1].append(map_classes(label, spec.class_map, classes, str(lab_path), overlapping))
        for imgs, labs in groups.values():
            yield RawCase(patient=patient, source=spec.name, image=np.stack(imgs), label=np.stack(labs),
                          origin=str(paths[0].parent), labelled_classes=tuple(spec.class_map))


def _iter_volumes(spec: SourceSpec, classes: list[str], overlapping: bool) -> Iterator[RawCase]:
    for path in sorted((Path(p) for p in glob.glob(str(spec.root / spec.images))), key=_natural_key):
        patient = _patient_of(path, spec.patient_pattern)
        if patient is None and path.is_dir():
            from ivdseg.io.dicom_index import index_folder

            ids = {s.patient_id for s in index_folder(path)}
            patient = sorted(ids)[0] if ids else None
        patient = patient or _stem(path)
        yield _volume_case(spec, classes, overlapping, path, _label_path(spec, path, patient), patient)


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


def pseudonym(key: bytes, source: str, patient: str) -> str:
    """Keyed hash of (source, patient): stable for one key, unlinkable without it."""
    return "P" + hmac.new(key, f"{source}\x00{patient}".encode(), hashlib.sha256).hexdigest()[:12]


MIN_KEY_BYTES = 16  # 128 bits: shorter keys make the pseudonyms guessable from a list of patient IDs
NEW_KEY_BYTES = 32


def load_or_create_pseudonym_key(path) -> tuple[bytes, bool]:
    """Reads the secret key of the pseudonyms, or creates a new random one readable by its owner only (0600).

    The file is kept outside the dataset: with it, the same patient gets the same pseudonym in later exports.

    Args:
        path: the key file; created with :data:`NEW_KEY_BYTES` random bytes when missing.

    Returns:
        (key, created): ``created`` is True when this call wrote the file, so that the caller can remove it
        when the export then fails (a failed run leaves nothing behind).

    Raises:
        IvdsegError: the file's folder is missing, the path is a folder, the file cannot be read or written, or
            an existing file is shorter than :data:`MIN_KEY_BYTES` (an empty file must never silently become a
            new key: every pseudonym would change).
    """
    path = Path(path)
    if path.is_dir():
        raise IvdsegError(f"The pseudonym key file {path} is a folder; give a file name.")
    if not path.parent.is_dir():
        raise IvdsegError(f"The folder of the pseudonym key file {path} does not exist; create it first.")
    if not path.exists():
        key = secrets.token_bytes(NEW_KEY_BYTES)
        atomic_write(path, lambda temp: Path(temp).write_bytes(key), mode=0o600)
        return key, True
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise IvdsegError(f"The pseudonym key file {path} cannot be read ({exc.strerror}).") from None
    if len(key) < MIN_KEY_BYTES:
        raise IvdsegError(f"The pseudonym key file {path} holds {len(key)} bytes, fewer than {MIN_KEY_BYTES}; "
                          "restore the real key file, or name a new file to start new pseudonyms.")
    return key, False


@dataclass
class ExportOptions:
    """How :func:`export_dataset` writes a dataset.

    Attributes:
        sizes: sides of the resized square copies, multiples of 16.
        background_channel: the resized ``mask`` keeps channel 0 (background, "no class" when overlapping).
        val_fraction, test_fraction: shares of each source's patients (ivdseg export's test default is 0.15;
            0: no test part).
        resize: how slices become squares (ivdseg.data.preprocess.RESIZE_MODES).
        seed, kfold: the split's shuffle and the number of stratified group folds (0: none).
        keep_unlabelled: keep the slices without any class (the default: a network that never sees an empty slice
            never learns to predict nothing); False drops them (``ivdseg export --drop-unlabelled``).
        overlapping: classes may overlap: labels hold one bit per class (at most
            :data:`ivdseg.data.labels.MAX_OVERLAPPING_CLASSES`), see :mod:`ivdseg.data.labels`.
        pseudonym_key: None: a fresh random key, used once and forgotten.
        table_class_names: {output class: the class name of an RLE table}, recorded in dataset.json so that a
            model's predictions are written back with the names the table used (``segment --rle-csv``).
    """

    sizes: tuple = ds.DEFAULT_SIZES
    background_channel: bool = True
    val_fraction: float = 0.1
    test_fraction: float = 0.0
    resize: str = "stretch"
    seed: int = 0
    kfold: int = 0
    keep_unlabelled: bool = True
    overlapping: bool = False
    pseudonym_key: bytes | None = None
    table_class_names: dict = field(default_factory=dict)


def _checked_key(options: ExportOptions, classes: list[str]) -> bytes:
    """Checks the options against ``classes``; returns the pseudonym key to use."""
    all_classes = ["background", *classes]
    if len(set(all_classes)) != len(all_classes):
        raise IvdsegError(f"Class names must be unique and not 'background': {classes}.")
    if options.overlapping and len(classes) > MAX_OVERLAPPING_CLASSES:
        raise IvdsegError(f"An overlapping export holds at most {MAX_OVERLAPPING_CLASSES} classes (one bit each of a "
                          f"uint8 label), not {len(classes)}.")
    if options.resize not in RESIZE_MODES:
        raise IvdsegError(f"The resize mode must be one of {', '.join(RESIZE_MODES)}, not {options.resize!r}.")
    for s in options.sizes:
        if int(s) < 16 or int(s) % 16:
            raise IvdsegError(f"Size {s} is not a multiple of 16; the networks halve it four times.")
    if options.pseudonym_key is None:
        return secrets.token_bytes(NEW_KEY_BYTES)
    if len(options.pseudonym_key) < MIN_KEY_BYTES:  # b"" must not fall back to a random key
        raise IvdsegError(f"The pseudonym key has {len(options.pseudonym_key)} bytes; it needs at least "
                          f"{MIN_KEY_BYTES}.")
    return options.pseudonym_key


def _checked_arrays(case: RawCase, num_classes: int, overlapping: bool) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of ``case`` as (N, H, W) arrays, label uint8 with no value (or bit) beyond the classes."""
    image, label = np.asarray(case.image), np.asarray(case.label, np.uint8)
    where = case.origin or case.patient
    if image.ndim != 3 or image.shape != label.shape:
        raise IvdsegError(f"{where}: image {image.shape} and label {label.shape} must be matching (N, H, W) stacks.")
    if not np.issubdtype(image.dtype, np.number):
        raise IvdsegError(f"{where}: image is not numeric.")
    if case.slice_plane not in SLICE_AXES:
        raise IvdsegError(f"{where}: slice plane {case.slice_plane!r} is not one of {', '.join(SLICE_AXES)}.")
    if overlapping:
        stray = int(np.bitwise_or.reduce(label, axis=None) if label.size else 0) >> (num_classes - 1)
        if stray:
            raise IvdsegError(f"{where}: label bit {stray.bit_length() + num_classes - 2} is set but the export has "
                              f"{num_classes - 1} classes (bits 0 to {num_classes - 2}).")
    elif label.max(initial=0) >= num_classes:
        raise IvdsegError(f"{where}: label value {label.max()} has no class.")
    return image, label


def export_dataset(cases: Iterable[RawCase], classes: list[str], out, options: ExportOptions | None = None,
                   overwrite=False, progress: ProgressFn | None = None) -> ds.DatasetInfo:
    """Writes the dataset folder (module docstring of :mod:`ivdseg.dataset`) atomically.

    Args:
        cases: RawCases, e.g. from :func:`iter_source_cases` or from Slicer nodes; their labels in the encoding
            ``options.overlapping`` says (class values, or one bit per class).
        classes: output class names without background, e.g. ["intervertebral disc"].
        out: dataset folder to create.
        options: sizes, split, label encoding and de-identification settings.
        overwrite: replace an existing folder (only once the new one is complete).
        progress: called as progress(done_cases, total_or_0, "export").

    Returns:
        The written dataset, opened.

    Raises:
        IvdsegError: no cases, a class with no voxel anywhere, a label value (or bit) without a class, cases of two
            slice planes, an unwritable or full destination.
    """
    options = options or ExportOptions()
    all_classes = ["background", *classes]
    key = _checked_key(options, classes)
    summary = ds.DatasetSummary(all_classes, options.overlapping)
    series_count: dict[str, int] = {}
    raw_order: dict[str, str] = {}  # pseudonym -> source identifier, in memory only (split order)
    planes: dict[str, str] = {}  # slice plane -> the first source that has it
    with ds.DatasetWriter(out, overwrite=overwrite) as writer:
        for n, case in enumerate(cases):
            image, label = _checked_arrays(case, len(all_classes), options.overlapping)
            planes.setdefault(case.slice_plane, case.source)
            if len(planes) > 1:
                (a, source_a), (b, source_b) = planes.items()
                raise IvdsegError(f"Source {source_a!r} gives {a} slices and source {source_b!r} {b} slices; a "
                                  "dataset holds one slice plane, so export them as two datasets.")
            labelled_values = _labelled_values(case, all_classes)
            if not options.keep_unlabelled:
                labelled = label.reshape(len(label), -1).any(axis=1)
                summary.add_dropped(case.source, int((~labelled).sum()))
                image, label = image[labelled], label[labelled]
                if not len(image):
                    continue
            pid = pseudonym(key, case.source, case.patient)
            raw_order[pid] = case.order_key or f"{case.source}\x00{case.patient}"
            k = series_count[pid] = series_count.get(pid, -1) + 1
            case_id = f"{pid}-{k}"
            ds.save_npz(writer.path("cases", f"{case_id}.npz"), image=image, label=label,
                        pixel_spacing_mm=np.asarray(case.pixel_spacing_mm, np.float64),
                        slice_spacing_mm=np.float64(case.slice_spacing_mm))
            for size in options.sizes:
                lab_r = resize_stack(label, int(size), is_label=True, mode=options.resize)
                mask = class_masks(lab_r, len(all_classes), options.overlapping).astype(np.uint8)
                ds.save_npz(writer.path(str(size), f"{case_id}.npz"),
                            image=resize_stack(image, int(size), mode=options.resize), label=lab_r,
                            mask=mask if options.background_channel else mask[..., 1:])
            order = {"slice_order": case.slice_order, "missing_slices": case.missing_slices} if case.slice_order else {}
            summary.add_case(case_id, pid, case.source, label, labelled_values, **order)
            if progress:
                progress(n + 1, 0, "export")
        if not summary.cases:
            raise IvdsegError(f"Nothing to export into {out}: no labelled image was found.")
        empty = [all_classes[c] for c in range(1, len(all_classes)) if summary.voxels[c] == 0]
        if empty:
            raise IvdsegError(f"Class {empty[0]!r} has no voxel in any case; check the class mapping.")
        plane = next(iter(planes))
        _write_splits(writer, options, summary.cases, raw_order)
        write_json(writer.path("dataset.json"), {
            "format": ds.FORMAT, "format_version": ds.FORMAT_VERSION,
            "classes": all_classes, "overlapping": bool(options.overlapping),
            "sizes": [int(s) for s in options.sizes], "resize": options.resize,
            "background_channel": options.background_channel,
            "slice_plane": plane, "slice_axes": SLICE_AXES[plane], **summary.to_json(),
            **({"table_class_names": dict(options.table_class_names)} if options.table_class_names else {}),
        })
    return ds.open_dataset(out)


def _labelled_values(case: RawCase, all_classes: list[str]) -> list[int]:
    """The class values ``case`` labels (all foreground classes unless its source names fewer)."""
    if case.labelled_classes is None:
        return list(range(1, len(all_classes)))
    unknown = [c for c in case.labelled_classes if c not in all_classes[1:]]
    if unknown:
        raise IvdsegError(f"{case.origin or case.source}: class {unknown[0]!r} is not among the output classes "
                          f"{all_classes[1:]}.")
    return sorted(all_classes.index(c) for c in set(case.labelled_classes))


def _write_splits(writer, options, meta_cases, raw_order):
    patient_strata = {m["patient"]: m["source"] for m in meta_cases.values()}
    parts = split_patients(patient_strata, options.val_fraction, options.test_fraction, options.seed, raw_order)
    splits = {"seed": options.seed, "val_fraction": options.val_fraction, "test_fraction": options.test_fraction,
              "stratified_by": "source", **parts}
    if options.kfold:  # over the patients outside test: folds choose, test only reports
        classes_of: dict[str, set] = {}
        for m in meta_cases.values():
            classes_of.setdefault(m["patient"], set()).update(m["classes_present"])
        strata = {p: f"{patient_strata[p]}|{sorted(classes_of[p])}" for p in patient_strata
                  if p not in set(parts["test"])}
        splits["folds"] = stratified_group_kfold(strata, options.kfold, options.seed, raw_order)
    write_json(writer.path("splits.json"), splits)
