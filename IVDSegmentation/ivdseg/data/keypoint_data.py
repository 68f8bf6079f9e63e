"""Keypoint datasets: images with one point per named keypoint, de-identified and split by patient.

Three kinds of source, each giving 2D samples with points as (row, column) pixels of the image:

* ``level_volumes``: sagittal MRI volumes (NIfTI, NRRD, DICOM) with a label per disc level (e.g. 1 = L5-S1); each
  disc's centre is the centroid of its voxels, seen on the mid-sagittal slice (the slice nearest the discs' mean);
  that slice and its ``neighbours`` on each side become samples (only the mid slice is scored).
* ``disc_slices``: consecutive sagittal PNG slices of a subject with one disc class (SPIDER); the discs are split into
  3D instances and counted up from the lowest, which the spec names (``lowest_level``, e.g. "L5-S1": SPIDER's scans
  all reach the sacrum).
* ``landmarks_csv``: 2D images with a CSV of points (the AASCE layout: ``filenames`` one image name per row,
  ``landmarks`` one row of K x-fractions then K y-fractions of the image size, optional ``angles``).

The folder: ``keypoints.json`` (keypoint names, input shape, per-source counts, cases), ``splits.json`` (train /
validation / test patients, drawn within each source), ``samples.npz``: ``image`` (N, H, W) float32 in [0, 1]
(per-image percentiles, letterboxed), ``points`` (N, K, 2) input pixels, ``scale_rc`` / ``offset_rc`` (N, 2) of the
letterbox, ``spacing_rc`` (N, 2) mm per image pixel (NaN where unknown), ``mid`` (N,) bool, ``case`` (N,) index
into the cases, ``angles`` (N, 3) degrees (NaN where none). Nothing names a patient, a file or a date.
"""

from __future__ import annotations

import csv
import json
import re
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError

FORMAT = "ivdseg-keypoints"
LUMBAR_DISCS = ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
SPINE_LEVELS = ["C2-C3", "C3-C4", "C4-C5", "C5-C6", "C6-C7", "C7-T1"] + [f"T{n}-T{n + 1}" for n in range(1, 12)] + \
    ["T12-L1"] + LUMBAR_DISCS
VERTEBRAE_T1_L5 = [f"T{n}" for n in range(1, 13)] + [f"L{n}" for n in range(1, 6)]
CORNERS = ("upper left", "upper right", "lower left", "lower right")
KEYPOINT_SETS = {
    "lumbar disc centres": LUMBAR_DISCS,
    "vertebra corners T1-L5": [f"{v} {c}" for v in VERTEBRAE_T1_L5 for c in CORNERS],
}


@dataclass
class RawSample:
    source: str
    patient: str
    image: np.ndarray  # (h, w) as read
    points_rc: np.ndarray  # (K, 2) image pixels
    spacing_rc: tuple = (np.nan, np.nan)
    mid: bool = True
    angles: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))


def keypoint_names(spec_value) -> list[str]:
    """The keypoint list of a spec: a list of names, or the name of a known set."""
    if isinstance(spec_value, str):
        if spec_value not in KEYPOINT_SETS:
            raise IvdsegError(f"Unknown keypoint set {spec_value!r}; use one of {sorted(KEYPOINT_SETS)} or a list.")
        return list(KEYPOINT_SETS[spec_value])
    if not isinstance(spec_value, list) or not spec_value or len(set(spec_value)) != len(spec_value):
        raise IvdsegError("'keypoints' must be a known set's name or a list of distinct names.")
    return [str(v) for v in spec_value]


def _patient(name: str, pattern: str | None) -> str:
    if not pattern:
        return name
    m = re.search(pattern, name)
    if not m:
        raise IvdsegError(f"{name} does not match the patient pattern {pattern!r}; fix the pattern.")
    return m.group(1) if m.groups() else m.group(0)


def _level_volume_samples(src: dict, root: Path, names: list[str]):
    from ivdseg.io.geometry import sagittal_slices
    from ivdseg.io.volumes import read_volume

    levels = {str(k): int(v) for k, v in src["levels"].items()}
    unknown = [k for k in levels if k not in names]
    if unknown:
        raise IvdsegError(f"Source {src['name']}: the levels {unknown} are not among the keypoints {names}.")
    images = sorted(root.glob(src["images"]))
    if not images:
        raise IvdsegError(f"Source {src['name']}: no image matches {root / src['images']}.")
    for path in images:
        patient = _patient(path.name, src.get("patient_pattern"))
        stack, mapping = sagittal_slices(read_volume(path))
        label_path = root / src["labels"].format(patient=patient, name=path.name)
        labels, _ = sagittal_slices(read_volume(label_path))
        if labels.shape != stack.shape:
            raise IvdsegError(f"{label_path} does not have the grid of {path}.")
        centres = np.full((len(names), 3), np.nan)
        for level, value in levels.items():
            voxels = np.argwhere(labels == value)
            if len(voxels):
                centres[names.index(level)] = voxels.mean(axis=0)
        yield from _around_mid(src["name"], patient, stack, centres, mapping.pixel_spacing_mm,
                               int(src.get("neighbours", 2)))


def _around_mid(source, patient, stack, centres, spacing_rc, neighbours):
    """Samples of the mid slice (nearest the mean of the known centres) and its neighbours; points (row, column)."""
    if not np.isfinite(centres).all():
        return
    mid = int(round(float(np.nanmean(centres[:, 0]))))
    for n in range(max(0, mid - neighbours), min(len(stack), mid + neighbours + 1)):
        yield RawSample(source, patient, stack[n], centres[:, 1:].copy(), tuple(spacing_rc), mid=n == mid)


def _disc_slice_samples(src: dict, root: Path, names: list[str]):
    import cv2

    from ivdseg.inference.levels import split_instances
    from ivdseg.io.geometry import stack_volume

    lowest = names.index(src.get("lowest_level", "L5-S1"))
    by_patient = defaultdict(list)
    for path in root.glob(src["images"]):
        m = re.search(src.get("slice_pattern", r"(\d+)\D*$"), path.stem)
        by_patient[_patient(path.name, src.get("patient_pattern"))].append((int(m.group(1)) if m else 0, path))
    if not by_patient:
        raise IvdsegError(f"Source {src['name']}: no image matches {root / src['images']}.")
    for patient, slices in sorted(by_patient.items()):
        slices.sort()
        stack = np.stack([cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for _, p in slices])
        labels = np.stack([cv2.imread(str(root / src["labels"].format(name=p.name)), cv2.IMREAD_UNCHANGED)
                           for _, p in slices])
        instances, n = split_instances(labels == int(src.get("disc_value", 1)), stack_volume(stack))
        found = sorted((np.argwhere(instances == v).mean(axis=0) for v in range(1, n + 1)), key=lambda c: c[1])
        centres = np.full((len(names), 3), np.nan)
        for k, centre in enumerate(reversed(found)):  # from the lowest disc upwards
            if lowest - k >= 0:
                centres[lowest - k] = centre
        yield from _around_mid(src["name"], patient, stack, centres, (np.nan, np.nan), int(src.get("neighbours", 2)))


def _read_csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if row]


def _landmark_samples(src: dict, root: Path, names: list[str]):
    import cv2

    k = len(names)
    filenames = [r[0] for r in _read_csv_rows(root / src["filenames"])]
    landmarks = _read_csv_rows(root / src["landmarks"])
    angles = _read_csv_rows(root / src["angles"]) if src.get("angles") else None
    if len(landmarks) != len(filenames) or angles is not None and len(angles) != len(filenames):
        raise IvdsegError(f"Source {src['name']}: the CSVs have different numbers of rows.")
    row_of = {name: n for n, name in enumerate(filenames)}
    images = sorted(root.glob(src["images"]))
    if not images:
        raise IvdsegError(f"Source {src['name']}: no image matches {root / src['images']}.")
    for path in images:
        if path.name not in row_of:
            raise IvdsegError(f"{path.name} has no row in {src['filenames']}.")
        values = np.asarray(landmarks[row_of[path.name]], float)
        if len(values) != 2 * k:
            raise IvdsegError(f"{src['landmarks']}: the row of {path.name} holds {len(values)} values, not "
                              f"2 x {k} keypoints.")
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise IvdsegError(f"{path} is not a readable image.")
        h, w = image.shape
        points = np.stack([values[k:] * h, values[:k] * w], axis=1)  # fractions -> (row, column)
        angle = np.asarray(angles[row_of[path.name]], float) if angles else np.full(3, np.nan)
        yield RawSample(src["name"], _patient(path.name, src.get("patient_pattern")), image, points,
                        angles=angle)


SOURCE_KINDS = {"level_volumes": _level_volume_samples, "disc_slices": _disc_slice_samples,
                "landmarks_csv": _landmark_samples}


def read_samples(spec: dict, sample_data: Path) -> tuple[list[str], list[RawSample]]:
    """(keypoint names, raw samples) of a spec ({"keypoints", "sources": [{name, kind, root, ...}]})."""
    names = keypoint_names(spec.get("keypoints"))
    samples = []
    for src in spec.get("sources") or []:
        if src.get("kind") not in SOURCE_KINDS:
            raise IvdsegError(f"Source {src.get('name')}: kind must be one of {sorted(SOURCE_KINDS)}.")
        root = Path(str(src["root"]).format(sample_data=sample_data))
        samples += list(SOURCE_KINDS[src["kind"]](src, root, names))
    if not samples:
        raise IvdsegError("The spec gives no sample with all its keypoints.")
    return names, samples


def write_dataset(out: Path, names: list[str], samples: list[RawSample], shape_hw, val_fraction=0.15,
                  test_fraction=0.15, seed=0, overwrite=False) -> dict:
    """Writes the dataset folder atomically; returns its keypoints.json."""
    import hashlib
    import hmac

    from ivdseg.data.preprocess import normalize_slices
    from ivdseg.data.splits import split_patients
    from ivdseg.inference.keypoints import Letterbox
    from ivdseg.io.atomic import atomic_folder

    key = secrets.token_bytes(32)  # used once and forgotten: the pseudonyms link to nothing
    pseudo = {(s.source, s.patient): "P" + hmac.new(key, f"{s.source}\x00{s.patient}".encode(),
                                                    hashlib.sha256).hexdigest()[:12] for s in samples}
    cases = sorted(set(pseudo.values()))
    strata = {pseudo[(s.source, s.patient)]: s.source for s in samples}
    order = {pseudo[(s.source, s.patient)]: f"{s.source}\x00{s.patient}" for s in samples}
    splits = split_patients(strata, val_fraction, test_fraction, seed, order=order)
    arrays = defaultdict(list)
    for s in samples:
        box = Letterbox(s.image.shape, shape_hw)
        image = normalize_slices(s.image[None].astype(np.float32))[0]
        arrays["image"].append(box.image(image, fill=0.0))
        arrays["points"].append(box.to_input(s.points_rc))
        arrays["scale_rc"].append(box.scale_rc)
        arrays["offset_rc"].append(box.offset_rc)
        arrays["spacing_rc"].append(np.asarray(s.spacing_rc, float))
        arrays["mid"].append(s.mid)
        arrays["case"].append(cases.index(pseudo[(s.source, s.patient)]))
        arrays["angles"].append(np.asarray(s.angles, float))
    counts = defaultdict(lambda: {"patients": set(), "samples": 0, "scored": 0})
    for s in samples:
        c = counts[s.source]
        c["patients"].add(pseudo[(s.source, s.patient)])
        c["samples"] += 1
        c["scored"] += int(s.mid)
    meta = {"format": FORMAT, "format_version": 1, "keypoints": names, "input_shape": list(shape_hw),
            "normalization": {"kind": "percentile", "percentiles": [0.5, 99.5]}, "resize": "letterbox",
            "cases": [{"case": c, "source": strata[c]} for c in cases],
            "sources": {k: {"patients": len(v["patients"]), "samples": v["samples"], "scored": v["scored"]}
                        for k, v in sorted(counts.items())}}
    with atomic_folder(Path(out), overwrite=overwrite) as staging:
        np.savez_compressed(staging / "samples.npz", **{k: np.stack(v) for k, v in arrays.items()})
        (staging / "keypoints.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (staging / "splits.json").write_text(json.dumps({**splits, "seed": seed}, indent=2) + "\n", encoding="utf-8")
    return meta


@dataclass
class KeypointSet:
    meta: dict
    splits: dict
    arrays: dict

    def part(self, split: str, scored_only=False) -> dict:
        """The arrays of the samples whose patient is in ``split`` ("train", "val", "test" or "all")."""
        cases = [c["case"] for c in self.meta["cases"]]
        wanted = set(cases) if split == "all" else set(self.splits.get(split, []))
        keep = np.array([cases[i] in wanted for i in self.arrays["case"]], bool)
        if scored_only:
            keep &= self.arrays["mid"].astype(bool)
        return {k: v[keep] for k, v in self.arrays.items()}


def read_dataset(folder) -> KeypointSet:
    """Reads a keypoint dataset folder (arrays with ``allow_pickle=False``)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "keypoints.json").read_text(encoding="utf-8"))
        splits = json.loads((folder / "splits.json").read_text(encoding="utf-8"))
        with np.load(folder / "samples.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError as exc:
        raise IvdsegError(f"{folder} is not a keypoint dataset ({Path(exc.filename).name} is missing); make one "
                          "with ivdseg export-keypoints.") from None
    except (json.JSONDecodeError, ValueError, OSError) as exc:
        raise IvdsegError(f"{folder} holds a damaged keypoint dataset ({exc}).") from None
    if meta.get("format") != FORMAT:
        raise IvdsegError(f"{folder} is not a keypoint dataset (format {meta.get('format')!r}).")
    return KeypointSet(meta, splits, arrays)
