"""The dataset folder: format, atomic writing, patient-level splits, safe reading.

Layout (DESIGN.md)::

    dataset.json            format version, classes, label encoding ("overlapping"), slice plane, sizes,
                            per-source summary (no identifiers), per-case metadata
    splits.json             seeded patient-level train/val split (+ optional k folds)
    cases/<case>.npz        native resolution: image (N, H, W), label (N, H, W) uint8, spacing
    <size>/<case>.npz       resized: image (N, S, S) float32, label (N, S, S) uint8,
                            mask (N, S, S, C) uint8 per-class masks (channel 0 = background when kept)

Labels hold class values, or one bit per class when ``"overlapping": true`` (:mod:`ivdseg.data.labels`); the mask
is one-hot for exclusive classes, and may have several channels set where overlapping classes meet (channel 0 is
then "no class"). A case is one series (a volume's sagittal slice stack, the 2D slices of one patient that share a
size, or one case-day of an RLE table); its id is ``<patient pseudonym>-<series index>``. Every array is numeric and
every load uses ``allow_pickle=False``.

Each source's summary in dataset.json says how many of its slices lack each class it labels
(``slices_without_class``) and how many lack every class (``slices_without_any_class``): they are kept unless
the export dropped them (``dropped_unlabelled_slices``). Slices the export spec lists as unannotated (an empty
label file over anatomy that nobody drew) are counted apart (``unannotated_slices``): their cases label no class.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ivdseg.data.labels import class_present
from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_folder
from ivdseg.data.splits import check_splits

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
    resize: str = "stretch"  # how the <size>/ copies were made (ivdseg.data.preprocess.RESIZE_MODES)
    overlapping: bool = False  # classes may overlap: labels hold one bit per class (ivdseg.data.labels)
    slice_plane: str = "sagittal"  # "sagittal" or "as stored" (2D images as given); the model card copies it
    sources: dict = field(default_factory=dict)  # source name -> its summary (DatasetSummary)

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

    def test_cases(self) -> list[str]:
        """Case ids of the test patients (reported, never chosen on); empty for a dataset exported without them."""
        return self.cases_of(self.splits.get("test", []))

    def labelled_classes(self, case: str) -> list[int]:
        """The class values ``case``'s source labels; the others are unknown in it, not background (datasets
        exported before sources could lack a class label every class)."""
        return list(self.cases[case].get("labelled_classes", range(1, self.num_classes)))

    def availability(self, case_ids) -> np.ndarray:
        """(N, C) bool, one row per slice of ``case_ids`` in :func:`load_resized`'s order: True where the slice's
        source labels the class (column 0, background, is known wherever every class is)."""
        rows = []
        for case in case_ids:
            known = np.zeros(self.num_classes, bool)
            known[self.labelled_classes(case)] = True
            known[0] = known[1:].all()
            rows.append(np.repeat(known[None], int(self.cases[case]["n_slices"]), axis=0))
        return np.concatenate(rows) if rows else np.zeros((0, self.num_classes), bool)

    def slice_sources(self, case_ids) -> np.ndarray:
        """(N,) the source of each slice of ``case_ids``, in :func:`load_resized`'s order."""
        names = [np.full(int(self.cases[c]["n_slices"]), self.cases[c]["source"], dtype=object) for c in case_ids]
        return np.concatenate(names).astype(str) if names else np.zeros(0, str)

    def unlabelled_by_source(self) -> dict[str, list[str]]:
        """{source: names of the classes it does not label}, for the sources that lack any."""
        out: dict[str, set] = {}
        for case, meta in self.cases.items():
            missing = set(range(1, self.num_classes)) - set(self.labelled_classes(case))
            if missing:
                out.setdefault(meta["source"], set()).update(missing)
        return {source: [self.classes[c] for c in sorted(m)] for source, m in sorted(out.items())}

    def patients_by_source(self) -> dict[str, list[str]]:
        """{source: sorted patient pseudonyms}."""
        out: dict[str, set] = {}
        for meta in self.cases.values():
            out.setdefault(meta["source"], set()).add(meta["patient"])
        return {source: sorted(patients) for source, patients in sorted(out.items())}


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


class DatasetSummary:
    """What dataset.json says about the cases and sources written so far (counts only, no identifiers).

    Args:
        all_classes: class names, background first.
        overlapping: the labels' encoding (one bit per class, or class values).
    """

    def __init__(self, all_classes: list[str], overlapping: bool):
        self.all_classes = list(all_classes)
        self.overlapping = overlapping
        self.voxels = np.zeros(len(all_classes), np.int64)  # [0]: voxels of no class
        self.cases: dict[str, dict] = {}
        self.sources: dict[str, dict] = {}
        self.dropped: dict[str, int] = {}

    def add_dropped(self, source: str, n_slices: int) -> None:
        """Counts slices without any class that the export dropped."""
        self.dropped[source] = self.dropped.get(source, 0) + n_slices

    def add_case(self, case_id: str, patient: str, source: str, label: np.ndarray, labelled_values: list[int],
                 **extra) -> dict:
        """Records one written case; returns its metadata.

        Args:
            case_id, patient, source: as written (pseudonymous).
            label: (N, H, W) uint8 in the summary's encoding.
            labelled_values: the class values the case's source labels (the others are unknown in it, not absent).
            extra: more metadata for the case (e.g. its slice order).
        """
        flat = np.asarray(label).reshape(len(label), -1)
        present = np.zeros((len(flat), len(self.all_classes)), bool)  # column 0: no class anywhere on the slice
        self.voxels[0] += np.count_nonzero(flat == 0)
        for c in range(1, len(self.all_classes)):
            per_slice = np.count_nonzero(class_present(flat, c, self.overlapping), axis=1)
            self.voxels[c] += int(per_slice.sum())
            present[:, c] = per_slice > 0
        present[:, 0] = ~present[:, 1:].any(axis=1)
        labelled = int((~present[:, 0]).sum())
        meta = self.cases[case_id] = {
            "patient": patient, "source": source, "n_slices": int(len(flat)), "labelled_slices": labelled,
            "shape_hw": list(np.shape(label)[1:]),
            "classes_present": [c for c in range(1, len(self.all_classes)) if present[:, c].any()],
            "labelled_classes": list(labelled_values), **extra,
        }
        src = self.sources.setdefault(source, {"patients": set(), "series": 0, "slices": 0, "labelled_slices": 0,
                                               "labelled_classes": set(), "unannotated": 0,
                                               "without": np.zeros(len(self.all_classes), np.int64)})
        src["labelled_classes"].update(labelled_values)
        src["patients"].add(patient)
        src["series"] += 1
        src["slices"] += int(len(flat))
        if labelled_values:
            src["labelled_slices"] += labelled
            src["without"] += (~present).sum(axis=0)
        else:  # unannotated: what it shows is unknown, so it counts as neither labelled nor empty
            src["unannotated"] += int(len(flat))
        return meta

    def source_json(self, name: str) -> dict:
        """One source's summary as dataset.json holds it."""
        s, names = self.sources[name], self.all_classes
        out = {"patients": len(s["patients"]), "series": s["series"], "slices": s["slices"],
               "labelled_slices": s["labelled_slices"],
               "labelled_classes": [names[c] for c in sorted(s["labelled_classes"])],
               "slices_without_any_class": s["slices"] - s["labelled_slices"] - s["unannotated"],
               "slices_without_class": {names[c]: int(s["without"][c]) for c in sorted(s["labelled_classes"])}}
        if s["unannotated"]:
            out["unannotated_slices"] = s["unannotated"]
        if name in self.dropped:
            out["dropped_unlabelled_slices"] = self.dropped[name]
        return out

    def to_json(self) -> dict:
        """The ``voxels_per_class``, ``sources`` and ``cases`` entries of dataset.json."""
        return {"voxels_per_class": {c: int(v) for c, v in zip(self.all_classes, self.voxels)},
                "sources": {name: self.source_json(name) for name in self.sources},
                "cases": self.cases}


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
                       cases=cases, splits=splits, resize=meta.get("resize", "stretch"),
                       overlapping=bool(meta.get("overlapping", False)),
                       slice_plane=meta.get("slice_plane", "sagittal"), sources=meta.get("sources") or {})


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
