"""Dataset export: image + label pairs (volumes or 2D slices) or RLE mask tables -> the de-identified dataset folder.

Two stages, so that the Slicer training panel can feed nodes instead of files:
``iter_source_cases(spec)`` (:mod:`ivdseg.data.sources`, re-exported here) reads files into :class:`RawCase`
objects, ``export_dataset`` writes them.
Identifiers (patient IDs, file names) live only in memory: patients become keyed-hash pseudonyms
whose key is never written, and no path, name, date or UID goes into any exported file.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.data.labels import MAX_OVERLAPPING_CLASSES, class_masks
from ivdseg.errors import IvdsegError
from ivdseg.data.splits import split_patients, stratified_group_kfold
from ivdseg.io.atomic import atomic_write, write_json
from ivdseg.data.preprocess import RESIZE_MODES, resize_stack
from ivdseg.data.sources import SLICE_AXES, RawCase
# the readers, for the callers that knew them here before they had their own module
from ivdseg.data.sources import SOURCE_KINDS, SourceSpec, check_same_geometry, iter_source_cases, map_classes  # noqa: F401

ProgressFn = Callable[[int, int, str], None]
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
    table_rle_order: str = ""  # how the RLE table numbered its pixels; recorded with the names


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
            **({"table_class_names": dict(options.table_class_names),
                "table_rle_order": options.table_rle_order or "row-major"} if options.table_class_names else {}),
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
