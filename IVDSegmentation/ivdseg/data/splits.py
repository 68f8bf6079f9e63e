"""Patient-level splits that cannot flatter: train / validation / test within each source, stratified group k-fold,
and leave-one-source-out.

* Train fits the weights; validation makes every choice (checkpoint, schedule, post-processing); test is reported
  and chooses nothing. All three are drawn within each source (hospital, data set), so each source is in each part
  where it has enough patients: one patient stays in training, two give one to validation, three or more give at
  least one to each part (when a test fraction is asked for).
* Every split works on patients, never on slices or series: a patient's series are all on one side.
* Shuffles are seeded and run over the patients sorted by an order key that the exporter takes from the source's
  own identifiers (held in memory only), so one seed gives one split whatever the pseudonym key.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError

PARTS = ("train", "val", "test")


def _members(patient_strata: dict[str, str], stratum: str, order: dict[str, str] | None) -> list[str]:
    return sorted((p for p, s in patient_strata.items() if s == stratum), key=lambda p: (order or {}).get(p, p))


def split_patients(patient_strata: dict[str, str], val_fraction=0.1, test_fraction=0.0, seed=0,
                   order: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Seeded train / validation / test split of patients, drawn within each stratum (e.g. each source).

    In each stratum of n patients: with ``test_fraction`` > 0 and n >= 3, round(test_fraction * n) (at least one)
    go to test; with n >= 2, round(val_fraction * n) (at least one) go to validation; the rest (at least one) train.

    Args:
        patient_strata: patient pseudonym -> stratum name.
        val_fraction: share of each stratum's patients in validation, in (0, 1).
        test_fraction: share in test, in [0, 1); val_fraction + test_fraction < 1.
        seed: seed of the shuffle.
        order: sort key per patient applied before the shuffle.

    Returns:
        {"train": [...], "val": [...], "test": [...]}, each sorted.

    Raises:
        ValueError: fractions out of range.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1) and leave patients for training; got {test_fraction} "
                         f"with val_fraction {val_fraction}")
    rng = np.random.default_rng(seed)
    parts = {part: [] for part in PARTS}
    for stratum in sorted(set(patient_strata.values())):
        members = _members(patient_strata, stratum, order)
        rng.shuffle(members)
        n = len(members)
        n_test = 0 if test_fraction == 0 or n < 3 else max(1, int(round(test_fraction * n)))
        n_val = 0 if n < 2 else max(1, int(round(val_fraction * n)))
        while n_test + n_val > max(n - 1, 0):  # keep one patient for training; give back from the larger part
            if n_test > 1 and n_test >= n_val:
                n_test -= 1
            elif n_val > 1:
                n_val -= 1
            else:
                n_test -= 1
        parts["test"] += members[:n_test]
        parts["val"] += members[n_test:n_test + n_val]
        parts["train"] += members[n_test + n_val:]
    return {part: sorted(patients) for part, patients in parts.items()}


def stratified_group_kfold(patient_strata: dict[str, str], k=5, seed=0,
                           order: dict[str, str] | None = None) -> list[list[str]]:
    """Stratified group k-fold: groups are patients, strata are e.g. "source|classes present".

    Patients of each stratum are shuffled (seeded) and dealt to the fold that currently holds the fewest patients,
    so every fold gets a near-equal share of every stratum and no patient is in two folds.

    Returns:
        k sorted lists of patients.

    Raises:
        ValueError: k < 2. IvdsegError: fewer patients than folds.
    """
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if len(patient_strata) < k:
        raise IvdsegError(f"{k}-fold split needs at least {k} patients; the dataset has {len(patient_strata)}.")
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    for stratum in sorted(set(patient_strata.values())):
        members = _members(patient_strata, stratum, order)
        rng.shuffle(members)
        for p in members:
            folds[int(np.argmin([len(f) for f in folds]))].append(p)
    return [sorted(f) for f in folds]


def check_splits(splits: dict, path: Path) -> None:
    """Raises IvdsegError when a patient sits in two parts of the split, in two folds, or in a fold and test."""
    seen: dict[str, str] = {}
    for part in PARTS:
        for patient in splits.get(part, []):
            if patient in seen:
                raise IvdsegError(f"{path} puts a patient in both {seen[patient]} and {part}; re-export the dataset.")
            seen[patient] = part
    in_folds: set[str] = set()
    for fold in splits.get("folds") or []:
        if in_folds & set(fold):
            raise IvdsegError(f"{path} puts a patient in two folds; re-export the dataset.")
        in_folds |= set(fold)
    if in_folds & set(splits.get("test", [])):
        raise IvdsegError(f"{path} puts a test patient in a k-fold fold; re-export the dataset.")
