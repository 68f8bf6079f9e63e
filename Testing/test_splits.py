"""Patient-level train / validation / test splits within each source, k-fold folds outside test, and the checks a
split file gets when a dataset is opened."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ivdseg.data import dataset as ds
from ivdseg.data.export import ExportOptions, RawCase, export_dataset
from ivdseg.data.splits import PARTS, check_splits, split_patients
from ivdseg.errors import IvdsegError

# Three sources of 33, 4 and 2 patients and one of 1 patient: the sizes of the sample data and its edge cases.
STRATA = {**{f"s{n:02d}": "spider" for n in range(33)}, **{f"c{n}": "ivd_lumbar_t2" for n in range(4)},
          "t0": "two", "t1": "two", "o0": "one"}


def _source_of(patient):
    return STRATA[patient]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_no_patient_in_two_parts_and_every_patient_somewhere(seed):
    parts = split_patients(STRATA, val_fraction=0.15, test_fraction=0.15, seed=seed)
    everyone = [p for part in PARTS for p in parts[part]]
    assert sorted(everyone) == sorted(STRATA)
    assert len(everyone) == len(set(everyone))


def test_every_source_is_in_every_part_where_it_has_enough_patients():
    parts = split_patients(STRATA, val_fraction=0.15, test_fraction=0.15, seed=0)
    per_part = {part: {_source_of(p) for p in parts[part]} for part in PARTS}
    assert per_part["train"] == {"spider", "ivd_lumbar_t2", "two", "one"}
    assert per_part["val"] == {"spider", "ivd_lumbar_t2", "two"}  # one patient stays in training
    assert per_part["test"] == {"spider", "ivd_lumbar_t2"}  # two patients give train + val, no test
    count = {part: {s: sum(_source_of(p) == s for p in parts[part]) for s in per_part["train"]} for part in PARTS}
    assert count["test"]["spider"] == count["val"]["spider"] == 5  # round(0.15 * 33)
    assert (count["train"]["ivd_lumbar_t2"], count["val"]["ivd_lumbar_t2"], count["test"]["ivd_lumbar_t2"]) == (2, 1, 1)


def test_the_split_is_fixed_by_the_seed_and_the_order_key():
    a = split_patients(STRATA, 0.15, 0.15, seed=3)
    assert a == split_patients(STRATA, 0.15, 0.15, seed=3)
    assert a["test"] != split_patients(STRATA, 0.15, 0.15, seed=4)["test"]
    # The same patients under other pseudonyms, with the same order key: the same people in each part.
    renamed = {f"x{p}": s for p, s in STRATA.items()}
    order = {f"x{p}": p for p in STRATA}
    b = split_patients(renamed, 0.15, 0.15, seed=3, order=order)
    assert {part: [order[p] for p in b[part]] for part in PARTS} == {part: sorted(a[part]) for part in PARTS}


def test_no_test_fraction_gives_the_two_way_split():
    parts = split_patients(STRATA, val_fraction=0.15, test_fraction=0.0, seed=0)
    assert parts["test"] == [] and len(parts["val"]) == 5 + 1 + 1


@pytest.mark.parametrize("val_fraction, test_fraction", [(0.0, 0.1), (1.0, 0.0), (0.5, 0.5), (0.2, -0.1)])
def test_fractions_out_of_range_are_refused(val_fraction, test_fraction):
    with pytest.raises(ValueError, match="fraction"):
        split_patients(STRATA, val_fraction, test_fraction)


def test_large_fractions_still_leave_a_patient_for_training():
    parts = split_patients({"a": "s", "b": "s", "c": "s"}, val_fraction=0.6, test_fraction=0.35, seed=0)
    assert [len(parts[part]) for part in PARTS] == [1, 1, 1]


@pytest.mark.parametrize("splits, message", [
    ({"train": ["a"], "val": ["a"], "test": []}, "both train and val"),
    ({"train": ["a"], "val": ["b"], "test": ["a"]}, "both train and test"),
    ({"train": ["a", "b"], "val": ["c"], "test": ["d"], "folds": [["a", "d"], ["b", "c"]]}, "test patient"),
    ({"train": ["a", "b"], "val": [], "test": [], "folds": [["a"], ["a", "b"]]}, "two folds"),
])
def test_a_split_file_that_mixes_parts_is_refused(splits, message, tmp_path):
    with pytest.raises(IvdsegError, match=message):
        check_splits(splits, tmp_path / "splits.json")


def _cases(patients_per_source):
    rng = np.random.default_rng(0)
    for source, n in patients_per_source.items():
        for k in range(n):
            image = rng.random((2, 32, 32)).astype(np.float32)
            label = np.zeros((2, 32, 32), np.uint8)
            label[:, 8:16, 8:24] = 1
            yield RawCase(patient=f"{source}-{k}", source=source, image=image, label=label)


def test_the_exported_dataset_holds_test_patients_outside_every_fold(tmp_path):
    options = ExportOptions(sizes=(32,), val_fraction=0.2, test_fraction=0.2, kfold=3)
    info = export_dataset(_cases({"a": 10, "b": 5}), ["disc"], tmp_path / "ds", options)
    splits = json.loads((tmp_path / "ds" / "splits.json").read_text())
    assert splits["test_fraction"] == 0.2 and len(splits["test"]) == 2 + 1
    assert not set(splits["test"]) & {p for fold in splits["folds"] for p in fold}
    assert sorted(p for fold in splits["folds"] for p in fold) == sorted(splits["train"] + splits["val"])
    assert {info.cases[c]["patient"] for c in info.test_cases()} == set(splits["test"])
    assert set(info.patients_by_source()) == {"a", "b"} and len(info.patients_by_source()["a"]) == 10
    reopened = ds.open_dataset(tmp_path / "ds")
    train, val = reopened.split_cases()
    assert not set(train) & set(reopened.test_cases()) and not set(val) & set(reopened.test_cases())
