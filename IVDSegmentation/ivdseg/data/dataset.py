"""The dataset folder: format, atomic writing, patient-level splits, safe reading.

Layout (DESIGN.md)::

    dataset.json            format version, classes, sizes, per-source summary (no identifiers)
    splits.json             seeded patient-level train/val split (+ optional k folds)
    cases/<case>.npz        native resolution: image (N, H, W), label (N, H, W) uint8, spacing
    <size>/<case>.npz       resized: image (N, S, S) float32, label (N, S, S) uint8,
                            mask (N, S, S, C) uint8 one-hot (channel 0 = background when kept)

A case is one series (a volume's sagittal slice stack, or the 2D slices of one patient that share a
size); its id is ``<patient pseudonym>-<series index>``. Every array is numeric and every load uses
``allow_pickle=False``.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_folder

FORMAT = "ivdseg-dataset"
FORMAT_VERSION = 1
DEFAULT_SIZES = (128, 192, 256)


@dataclass
class DatasetInfo:
    """What dataset.json and splits.json say, checked."""

    root: Path
    classes: list[str]  # index = label value; classes[0] == "background"
    sizes: list[int]
    cases: dict[str, dict]  # case id -> {"patient", "source", "n_slices", "labelled_slices", ...}
    splits: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def cases_of(self, patients) -> list[str]:
        wanted = set(patients)
        return sorted(c for c, meta in self.cases.items() if meta["patient"] in wanted)

    def split_cases(self, fold: int | None = None) -> tuple[list[str], list[str]]:
        """(train case ids, validation case ids) of the main split or of k-fold ``fold``."""
        if fold is None:
            train, val = self.splits["train"], self.splits["val"]
        else:
            folds = self.splits.get("folds") or []
            if not 0 <= fold < len(folds):
                raise IvdsegError(f"{self.root / 'splits.json'} has {len(folds)} folds; fold {fold} does not exist.")
            val = folds[fold]
            train = [p for k, f in enumerate(folds) if k != fold for p in f]
        return self.cases_of(train), self.cases_of(val)


# ---------------------------------------------------------------- writing
def save_npz(path: Path, **arrays) -> None:
    """Compressed npz of numeric arrays (written inside DatasetWriter's staging folder, which is what
    makes the dataset appear whole or not at all)."""
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise ValueError(f"{key} is not numeric; datasets hold numeric arrays only")
    np.savez_compressed(Path(path), **arrays)


class DatasetWriter:
    """Writes a dataset into a hidden staging folder that replaces ``root`` only when complete.

    Use as a context manager (:func:`ivdseg.io.atomic.atomic_folder`): an exception (or Ctrl-C) removes the
    staging folder and leaves any previous dataset at ``root`` untouched.
    """

    def __init__(self, root, overwrite=False):
        self.root = Path(root)
        self._folder = atomic_folder(self.root, overwrite=overwrite)
        self.staging: Path | None = None

    def __enter__(self):
        self.staging = self._folder.__enter__()
        (self.staging / "cases").mkdir()
        return self

    def path(self, *parts) -> Path:
        p = self.staging.joinpath(*map(str, parts))
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def __exit__(self, exc_type, exc, tb):
        return self._folder.__exit__(exc_type, exc, tb)


# ---------------------------------------------------------------- splits
def _rng(seed):
    return np.random.default_rng(seed)


def split_patients(patient_strata: dict[str, str], val_fraction=0.1, seed=0,
                   order: dict[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Seeded patient-level train/validation split, drawn within each stratum (e.g. each source).

    Each stratum with at least two patients gives at least one to validation, so every source is
    validated; a stratum with one patient stays in training.

    Args:
        patient_strata: patient pseudonym -> stratum name.
        val_fraction: share of each stratum's patients in validation, in (0, 1).
        seed: seed of the shuffle.
        order: optional sort key per patient applied before the shuffle (the exporter passes the
            source's own identifiers, held in memory only, so that one seed gives one split whatever
            the pseudonym key).

    Returns:
        (train patients, validation patients), each sorted.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    rng = _rng(seed)
    train, val = [], []
    for stratum in sorted(set(patient_strata.values())):
        members = sorted((p for p, s in patient_strata.items() if s == stratum),
                         key=(lambda p: (order or {}).get(p, p)))
        rng.shuffle(members)
        n_val = 0 if len(members) < 2 else max(1, int(round(val_fraction * len(members))))
        val += members[:n_val]
        train += members[n_val:]
    return sorted(train), sorted(val)


def stratified_group_kfold(patient_strata: dict[str, str], k=5, seed=0,
                           order: dict[str, str] | None = None) -> list[list[str]]:
    """Stratified group k-fold: groups are patients, strata are e.g. "source|classes present".

    Patients of each stratum are shuffled (seeded) and dealt to the fold that currently holds the
    fewest patients, so every fold gets a near-equal share of every stratum and no patient is in
    two folds.

    Returns:
        k sorted lists of patients.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if len(patient_strata) < k:
        raise IvdsegError(f"{k}-fold split needs at least {k} patients; the dataset has {len(patient_strata)}.")
    rng = _rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    for stratum in sorted(set(patient_strata.values())):
        members = sorted((p for p, s in patient_strata.items() if s == stratum),
                         key=(lambda p: (order or {}).get(p, p)))
        rng.shuffle(members)
        for p in members:
            sizes = [len(f) for f in folds]
            folds[int(np.argmin(sizes))].append(p)
    return [sorted(f) for f in folds]


def check_splits(splits: dict, path: Path) -> None:
    """Raises IvdsegError when a patient sits on both sides of the split or in two folds."""
    both = set(splits.get("train", [])) & set(splits.get("val", []))
    if both:
        raise IvdsegError(f"{path} puts {len(both)} patient(s) in both train and val; re-export the dataset.")
    seen: set[str] = set()
    for fold in splits.get("folds") or []:
        if seen & set(fold):
            raise IvdsegError(f"{path} puts a patient in two folds; re-export the dataset.")
        seen |= set(fold)


# ---------------------------------------------------------------- reading
def load_npz(path) -> dict[str, np.ndarray]:
    """Loads an npz with ``allow_pickle=False``; one-sentence IvdsegError for pickles or damage."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise IvdsegError(f"{path} is missing; the dataset is incomplete, re-export it.") from None
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise IvdsegError(f"{path} holds pickled Python objects, which are refused for safety; "
                              "re-export it with ivdseg export.") from None
        raise IvdsegError(f"{path} is not a readable npz file ({exc}).") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise IvdsegError(f"{path} is damaged or not an npz file ({exc}).") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IvdsegError(f"{path} is missing; is {path.parent} a dataset folder made by ivdseg export?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IvdsegError(f"{path} is not valid JSON ({exc}).") from None


def open_dataset(root) -> DatasetInfo:
    """Reads and checks dataset.json and splits.json.

    Raises:
        IvdsegError: not a dataset folder, unknown format or version, no cases, a bad split.
    """
    root = Path(root)
    if not root.is_dir():
        raise IvdsegError(f"{root} is not a folder; give the dataset folder written by ivdseg export.")
    meta = _read_json(root / "dataset.json")
    if meta.get("format") != FORMAT:
        raise IvdsegError(f"{root / 'dataset.json'} is not an ivdseg dataset (format {meta.get('format')!r}).")
    if meta.get("format_version") != FORMAT_VERSION:
        raise IvdsegError(f"{root / 'dataset.json'} has format version {meta.get('format_version')!r}; "
                          f"this ivdseg reads version {FORMAT_VERSION}, re-export the dataset.")
    cases = meta.get("cases") or {}
    if not cases:
        raise IvdsegError(f"{root} holds no cases; export at least one labelled image.")
    splits = _read_json(root / "splits.json")
    check_splits(splits, root / "splits.json")
    return DatasetInfo(root=root, classes=list(meta["classes"]), sizes=list(meta["sizes"]),
                       cases=cases, splits=splits)


def load_resized(info: DatasetInfo, case_ids, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Stacks the resized slices of ``case_ids``.

    Returns:
        images (N, S, S) float32 as stored (not normalised), labels (N, S, S) uint8.
    """
    if size not in info.sizes:
        raise IvdsegError(f"{info.root} has no {size} px copy (it has {info.sizes}); "
                          f"re-export with --sizes including {size}.")
    images, labels = [], []
    for case in case_ids:
        data = load_npz(info.root / str(size) / f"{case}.npz")
        images.append(data["image"].astype(np.float32))
        labels.append(data["label"].astype(np.uint8))
    if not images:
        return np.zeros((0, size, size), np.float32), np.zeros((0, size, size), np.uint8)
    return np.concatenate(images), np.concatenate(labels)
