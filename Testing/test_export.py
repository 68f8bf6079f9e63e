"""Dataset export: contents, resizing, splits, de-identification, bad inputs, atomicity."""

from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
from conftest import exported_bytes, require_data
from dicom_builders import SAGITTAL_IOP, _series

from ivdseg.data import dataset as ds
from ivdseg.data.splits import stratified_group_kfold
from ivdseg.errors import IvdsegError
from ivdseg.data.export import (ExportOptions, RawCase, SourceSpec, export_dataset, iter_source_cases, map_classes,
                                pseudonym)
from ivdseg.io.geometry import Volume
from ivdseg.io.volumes import read_volume, write_volume

CLASSES = ["intervertebral disc"]


def _raw(patient, source="s1", n=3, h=40, w=30, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 1000, (n, h, w)).astype(np.int16)
    label = np.zeros((n, h, w), np.uint8)
    label[:, 10:20, 5:15] = 1
    return RawCase(patient=patient, source=source, image=image, label=label, origin=f"{patient}.nii")



def test_export_layout_shapes_and_values(tmp_path):
    cases = [_raw(f"patient{i}", seed=i) for i in range(10)]
    info = export_dataset(cases, CLASSES, tmp_path / "d", ExportOptions(sizes=(32, 64)))
    assert info.classes == ["background", "intervertebral disc"]
    assert len(info.cases) == 10
    case = sorted(info.cases)[0]
    native = ds.load_npz(tmp_path / "d" / "cases" / f"{case}.npz")
    assert native["image"].shape == (3, 40, 30) and native["image"].dtype == np.int16
    small = ds.load_npz(tmp_path / "d" / "32" / f"{case}.npz")
    assert small["image"].shape == (3, 32, 32) and small["image"].dtype == np.float32
    assert small["label"].dtype == np.uint8 and set(np.unique(small["label"])) == {0, 1}
    assert small["mask"].shape == (3, 32, 32, 2)  # background channel first
    np.testing.assert_array_equal(small["mask"].argmax(-1), small["label"])
    np.testing.assert_array_equal(small["mask"].sum(-1), 1)
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["sources"]["s1"] == {"patients": 10, "series": 10, "slices": 30, "labelled_slices": 30,
                                     "labelled_classes": ["intervertebral disc"], "slices_without_any_class": 0,
                                     "slices_without_class": {"intervertebral disc": 0}}
    assert meta["overlapping"] is False and meta["slice_plane"] == "sagittal" and not info.overlapping


def test_a_source_that_lacks_a_class_records_it_and_its_slices_mark_it_unknown(tmp_path):
    def case(patient, source, labelled):
        raw = _raw(patient, source, seed=len(patient))
        raw.label[:, 25:30, 5:15] = 2 if "vertebra" in labelled else 0
        raw.labelled_classes = labelled
        return raw

    both = ("intervertebral disc", "vertebra")
    cases = [case(f"a{i}", "full", both) for i in range(3)] + [case(f"b{i}", "discs", both[:1]) for i in range(3)]
    info = export_dataset(cases, list(both), tmp_path / "d", ExportOptions(sizes=(32,)))
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["sources"]["full"]["labelled_classes"] == list(both)
    assert meta["sources"]["discs"]["labelled_classes"] == ["intervertebral disc"]
    assert info.unlabelled_by_source() == {"discs": ["vertebra"]}
    order = sorted(info.cases, key=lambda c: info.cases[c]["source"])  # discs first, then full
    known = info.availability(order)
    assert known.shape == (18, 3)
    assert known[:9].tolist() == [[False, True, False]] * 9  # background is unknown where a class is
    assert known[9:].all()
    assert info.slice_sources(order).tolist() == ["discs"] * 9 + ["full"] * 9  # the same order, slice by slice
    with pytest.raises(IvdsegError, match="'canal' is not among the output classes"):
        export_dataset([case("c", "x", ("canal",))], list(both), tmp_path / "e", ExportOptions(sizes=(32,)))


def test_a_spec_source_labels_the_classes_of_its_class_map(tmp_path):
    root = tmp_path / "src"
    (root / "img").mkdir(parents=True)
    for n in range(2):
        cv2.imwrite(str(root / "img" / f"s{n}.png"), np.full((16, 16), 100, np.uint8))
        np.save(root / "img" / f"s{n}.npy", np.eye(16, dtype=np.uint8))
    spec = SourceSpec.from_dict({"name": "x", "kind": "slices", "root": str(root), "images": "img/*.png",
                                 "labels": "img/{stem}.npy", "classes": {"vertebra": [1]}}, tmp_path)
    cases = list(iter_source_cases(spec, ["intervertebral disc", "vertebra"]))
    assert {c.labelled_classes for c in cases} == {("vertebra",)}
    assert all(set(np.unique(c.label)) == {0, 2} for c in cases)


def test_slices_listed_as_unannotated_label_no_class_and_are_counted_apart(tmp_path):
    """An empty label file over anatomy nobody drew is not a negative: its case labels no class (so training and
    evaluation leave it out), it keeps its patient (so the split does not move), and dataset.json counts it apart."""
    root = tmp_path / "src"
    (root / "img").mkdir(parents=True)
    for n, stem in enumerate(("p0_0", "p0_1", "p1_2", "p2_3")):  # p0_1 unannotated, p2_3 truly empty
        cv2.imwrite(str(root / "img" / f"{stem}.png"), np.full((16, 16), 100 + n, np.uint8))
    for png in (root / "img").glob("*.png"):
        label = np.zeros((16, 16), np.uint8)
        if png.stem != "p2_3":  # p0_1: a stray stroke, not a drawing of what it shows
            label[4:8, 4:12 if png.stem != "p0_1" else 5] = 1
        np.save(root / "img" / f"{png.stem}.npy", label)
    spec = {"name": "x", "kind": "slices", "root": str(root), "images": "img/*.png", "labels": "img/{stem}.npy",
            "patient_pattern": "^(p\\d)_", "classes": {"intervertebral disc": [1]}, "unannotated": ["img/p0_1.png"]}
    cases = list(iter_source_cases(SourceSpec.from_dict(spec, tmp_path), CLASSES))
    assert sorted((c.patient, len(c.image), c.labelled_classes) for c in cases) == [
        ("p0", 1, ()), ("p0", 1, ("intervertebral disc",)), ("p1", 1, ("intervertebral disc",)),
        ("p2", 1, ("intervertebral disc",))]
    info = export_dataset(cases, CLASSES, tmp_path / "d", ExportOptions(sizes=(16,), val_fraction=0.34))
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())["sources"]["x"]
    assert meta["patients"] == 3 and meta["unannotated_slices"] == 1 and meta["labelled_slices"] == 2
    assert meta["slices_without_any_class"] == 1 and meta["slices_without_class"] == {"intervertebral disc": 1}
    unannotated = [c for c, m in info.cases.items() if not m["labelled_classes"]]
    assert len(unannotated) == 1 and not info.availability(unannotated).any()  # nothing known: out of the loss
    for bad, message in (({"unannotated": ["img/p9_9.png"]}, "does not find it"),
                         ({"unannotated": "img/p0_1.png"}, "must be a list"),
                         ({"kind": "pairs", "pairs": [], "unannotated": ["a.png"]}, "applies to sources of kind")):
        with pytest.raises(IvdsegError, match=message):
            list(iter_source_cases(SourceSpec.from_dict({**spec, **bad}, tmp_path), CLASSES))


def test_no_background_channel_option(tmp_path):
    info = export_dataset([_raw("a"), _raw("b")], CLASSES, tmp_path / "d",
                          ExportOptions(sizes=(32,), background_channel=False))
    data = ds.load_npz(tmp_path / "d" / "32" / f"{sorted(info.cases)[0]}.npz")
    assert data["mask"].shape == (3, 32, 32, 1)
    np.testing.assert_array_equal(data["mask"][..., 0], data["label"])


def test_unlabelled_slices_kept_by_default_and_dropped_on_request(tmp_path):
    case = _raw("a")
    case.label[0] = 0
    info = export_dataset([case, _raw("b")], CLASSES, tmp_path / "keep", ExportOptions(sizes=(32,)))
    assert sorted(m["n_slices"] for m in info.cases.values()) == [3, 3]
    info = export_dataset([case, _raw("b")], CLASSES, tmp_path / "drop",
                          ExportOptions(sizes=(32,), keep_unlabelled=False))
    assert sorted(m["n_slices"] for m in info.cases.values()) == [2, 3]


def test_empty_slices_are_counted_per_class_and_dropped_ones_too(tmp_path):
    both = ["intervertebral disc", "vertebra"]
    case = _raw("a", n=4)
    case.label[1] = 0  # slice 1: nothing; slices 2, 3: a vertebra too
    case.label[2:, 30:35, 5:15] = 2
    info = export_dataset([case, _raw("b", n=2)], both, tmp_path / "keep", ExportOptions(sizes=(32,)))
    assert info.sources["s1"]["slices_without_class"] == {"intervertebral disc": 1, "vertebra": 4}
    assert info.sources["s1"]["slices_without_any_class"] == 1 and "dropped_unlabelled_slices" not in info.sources["s1"]
    info = export_dataset([case, _raw("b", n=2)], both, tmp_path / "drop",
                          ExportOptions(sizes=(32,), keep_unlabelled=False))
    assert info.sources["s1"]["dropped_unlabelled_slices"] == 1 and info.sources["s1"]["slices"] == 5
    assert info.sources["s1"]["slices_without_class"] == {"intervertebral disc": 0, "vertebra": 3}


def test_overlapping_export_keeps_one_bit_per_class(tmp_path):
    both = ["stomach", "large bowel"]
    label = np.zeros((2, 40, 30), np.uint8)
    label[:, 5:20, 5:20] |= 1  # stomach (bit 0)
    label[:, 15:30, 15:25] |= 2  # large bowel (bit 1), overlapping the stomach in 5x5 pixels
    label[1] = 0
    cases = [RawCase(patient=f"p{i}", source="gi", image=np.ones((2, 40, 30), np.uint16), label=label,
                     slice_plane="as stored") for i in range(3)]
    info = export_dataset(cases, both, tmp_path / "d", ExportOptions(sizes=(32,), overlapping=True,
                                                                      val_fraction=0.34))
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert info.overlapping and meta["overlapping"] is True and meta["slice_plane"] == "as stored"
    assert meta["voxels_per_class"] == {"background": 3 * (2 * 40 * 30 - 15 * 15 - 15 * 10 + 25),
                                        "stomach": 3 * 225, "large bowel": 3 * 150}
    case = sorted(info.cases)[0]
    assert info.cases[case]["classes_present"] == [1, 2] and info.cases[case]["labelled_slices"] == 1
    assert info.sources["gi"]["slices_without_class"] == {"stomach": 3, "large bowel": 3}
    np.testing.assert_array_equal(ds.load_npz(tmp_path / "d" / "cases" / f"{case}.npz")["label"], label)
    small = ds.load_npz(tmp_path / "d" / "32" / f"{case}.npz")
    assert small["mask"].shape == (2, 32, 32, 3)
    assert (small["mask"][0, ..., 1:].sum(-1) == 2).any()  # both classes where they overlap
    np.testing.assert_array_equal(small["mask"][..., 0], small["label"] == 0)  # channel 0: no class
    no_bg = export_dataset(cases, both, tmp_path / "e", ExportOptions(sizes=(32,), overlapping=True,
                                                                       background_channel=False))
    assert ds.load_npz(tmp_path / "e" / "32" / f"{sorted(no_bg.cases)[0]}.npz")["mask"].shape == (2, 32, 32, 2)


def test_overlapping_export_refuses_stray_bits_and_too_many_classes(tmp_path):
    case = _raw("a")
    case.label[0, 0, 0] = 4  # bit 2, with two classes
    with pytest.raises(IvdsegError, match=r"label bit 2 is set but the export has 2 classes \(bits 0 to 1\)"):
        export_dataset([case], ["a", "b"], tmp_path / "d", ExportOptions(sizes=(32,), overlapping=True))
    with pytest.raises(IvdsegError, match="at most 8 classes"):
        export_dataset([_raw("a")], [f"c{i}" for i in range(9)], tmp_path / "d",
                       ExportOptions(sizes=(32,), overlapping=True))
    assert list(tmp_path.iterdir()) == []


def test_split_is_patient_level_seeded_and_independent_of_pseudonym_key(tmp_path):
    cases = [_raw(f"p{i}", source="a" if i < 12 else "b", seed=i) for i in range(16)]
    cases.append(_raw("p0", source="a", h=50, seed=99))  # a second series of patient p0, other size

    def validation_patients(key, seed, name):
        """The source's own patient IDs of the validation split, mapped back through the pseudonyms."""
        info = export_dataset(cases, CLASSES, tmp_path / name, ExportOptions(sizes=(32,), seed=seed,
                                                                             pseudonym_key=key))
        raw_of = {pseudonym(key, c.source, c.patient): c.patient for c in cases}
        assert set(raw_of) == {m["patient"] for m in info.cases.values()} and len(info.cases) == 17
        train, val = info.split_cases()
        assert not {info.cases[c]["patient"] for c in train} & {info.cases[c]["patient"] for c in val}
        assert {info.cases[c]["source"] for c in val} == {"a", "b"}  # every source validated
        return {raw_of[info.cases[c]["patient"]] for c in val}, set(raw_of)

    first, pseudonyms_1 = validation_patients(b"k1" * 16, 3, "d1")
    again, pseudonyms_2 = validation_patients(b"k2" * 16, 3, "d2")
    other_seed, _ = validation_patients(b"k1" * 16, 4, "d3")
    assert pseudonyms_1.isdisjoint(pseudonyms_2)  # another key: every pseudonym differs...
    assert again == first and len(first) == 2  # ...yet the same patients are validated
    assert other_seed != first  # while the seed does choose them


def test_stratified_group_kfold_folds_partition_patients():
    strata = {f"p{i}": ("a" if i % 3 else "b") for i in range(20)}
    folds = stratified_group_kfold(strata, k=4, seed=1)
    assert sorted(p for f in folds for p in f) == sorted(strata)
    assert [len(f) for f in folds] == [5, 5, 5, 5]
    for f in folds:  # each fold gets its share of the rare stratum (7 b's over 4 folds)
        assert 1 <= sum(strata[p] == "b" for p in f) <= 2
    assert folds == stratified_group_kfold(strata, k=4, seed=1)
    with pytest.raises(IvdsegError, match="at least 30 patients"):
        stratified_group_kfold(strata, k=30)


def test_kfold_written_and_fold_split(tmp_path):
    info = export_dataset([_raw(f"p{i}", seed=i) for i in range(10)], CLASSES, tmp_path / "d",
                          ExportOptions(sizes=(32,), kfold=5))
    assert len(info.splits["folds"]) == 5
    train, val = info.split_cases(fold=2)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    with pytest.raises(IvdsegError, match="fold 5 does not exist"):
        info.split_cases(fold=5)


def test_deidentification_scan_on_dicom_source(tmp_path):
    """A DICOM series with a name, ID, birth date, study date and UIDs: none of them may be exported."""
    secrets = dict(PatientName="Doe^Johnathan", PatientID="MRN-7733191", PatientBirthDate="19610417",
                   StudyDate="20230905", AccessionNumber="ACC99812")
    study_uid, series_uid = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
    src = tmp_path / "src"
    _series(src / "Doe_Johnathan_MRN-7733191", iop=SAGITTAL_IOP, series_uid=series_uid,
            StudyInstanceUID=study_uid, **secrets)
    image = read_volume(src / "Doe_Johnathan_MRN-7733191")
    label = np.zeros(image.array.shape, np.uint8)
    label[:, 1:3, 2:4] = 7
    write_volume(Volume(label, image.ijk_to_ras), src / "MRN-7733191_label.nii.gz")
    spec = SourceSpec(name="hospitalA", kind="volumes", images="Doe_*", labels="{patient}_label.nii.gz",
                      class_map={"intervertebral disc": [7]}, patient_pattern=r"_(MRN-\d+)$", root=src)
    cases = list(iter_source_cases(spec, CLASSES))
    assert cases[0].label.max() == 1
    export_dataset(cases, CLASSES, tmp_path / "out", ExportOptions(sizes=(32,), val_fraction=0.5))
    blob = exported_bytes(tmp_path / "out").lower()
    forbidden = ["Doe", "Johnathan", "MRN-7733191", "7733191", "19610417", "20230905", "ACC99812",
                 study_uid, series_uid, str(src)]
    for value in forbidden:
        assert value.lower().encode() not in blob, value


def test_map_classes_keeps_only_named_labels():
    src = np.array([[0, 1, 2, 3], [2, 2, 1, 0]])
    out = map_classes(src, {"intervertebral disc": [2]}, CLASSES)
    np.testing.assert_array_equal(out, [[0, 0, 1, 0], [1, 1, 0, 0]])
    with pytest.raises(IvdsegError, match="not among the output classes"):
        map_classes(src, {"vertebra": [1]}, CLASSES)
    bits = map_classes(src, {"disc": [2], "disc or vertebra": [1, 2]}, ["disc", "disc or vertebra"], overlapping=True)
    np.testing.assert_array_equal(bits, [[0, 2, 3, 0], [3, 3, 2, 0]])  # both classes keep label 2


def test_slices_source_groups_patients_by_pattern(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    for subject in (3, 12):
        for k in (9, 10, 11):
            cv2.imwrite(str(tmp_path / "img" / f"{subject}_t2_slice{k}.png"), np.full((20, 16), k * 10, np.uint8))
            lab = np.zeros((20, 16), np.uint8)
            lab[5:8, 4:9] = 2
            cv2.imwrite(str(tmp_path / "lab" / f"{subject}_t2_slice{k}.png"), lab)
    spec = SourceSpec(name="s", kind="slices", images="img/*.png", labels="lab/{name}",
                      class_map={"intervertebral disc": [2]}, patient_pattern=r"^(\d+)_", root=tmp_path)
    cases = list(iter_source_cases(spec, CLASSES))
    assert sorted(c.patient for c in cases) == ["12", "3"]
    assert cases[0].image.shape == (3, 20, 16)
    np.testing.assert_array_equal(cases[0].image[:, 0, 0], [90, 100, 110])  # natural order 9 < 10 < 11


# ------------------------------------------------------------------ bad inputs
def test_label_geometry_differs(tmp_path):
    vol = Volume(np.zeros((4, 5, 6), np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))
    write_volume(vol, tmp_path / "a_img.nii.gz")
    shifted = np.diag([1.0, 1.0, 1.0, 1.0])
    shifted[0, 3] = 5.0
    write_volume(Volume(np.ones((4, 5, 6), np.uint8), shifted), tmp_path / "a_lab.nii.gz")
    spec = SourceSpec(name="s", kind="volumes", images="*_img.nii.gz", labels="{patient}_lab.nii.gz",
                      class_map={"intervertebral disc": [1]}, patient_pattern=r"^(\w)_", root=tmp_path)
    with pytest.raises(IvdsegError, match="a_lab.nii.gz has another origin"):
        list(iter_source_cases(spec, CLASSES))
    write_volume(Volume(np.ones((4, 5, 7), np.uint8), np.eye(4)), tmp_path / "a_lab.nii.gz", overwrite=True)
    with pytest.raises(IvdsegError, match="a_lab.nii.gz has .* voxels but its image has"):
        list(iter_source_cases(spec, CLASSES))


def test_empty_dataset_and_empty_class_are_refused_and_nothing_is_left(tmp_path):
    with pytest.raises(IvdsegError, match="no labelled image"):
        export_dataset([], CLASSES, tmp_path / "d")
    empty = _raw("a")
    empty.label[:] = 0
    with pytest.raises(IvdsegError, match="has no voxel in any case"):
        export_dataset([empty], CLASSES, tmp_path / "d", ExportOptions(sizes=(32,)))
    assert list(tmp_path.iterdir()) == []  # no dataset and no staging folder


def test_failure_midway_keeps_the_previous_dataset(tmp_path):
    export_dataset([_raw("a"), _raw("b")], CLASSES, tmp_path / "d", ExportOptions(sizes=(32,)))
    before = sorted(p.name for p in (tmp_path / "d" / "cases").iterdir())

    def broken():
        yield _raw("c")
        raise IvdsegError("source went away")

    with pytest.raises(IvdsegError, match="went away"):
        export_dataset(broken(), CLASSES, tmp_path / "d", ExportOptions(sizes=(32,)), overwrite=True)
    assert sorted(p.name for p in (tmp_path / "d" / "cases").iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_existing_folder_refused_without_overwrite(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IvdsegError, match="already exists"):
        export_dataset([_raw("a")], CLASSES, tmp_path / "d")


def test_missing_parent_folder(tmp_path):
    with pytest.raises(IvdsegError, match="does not exist"):
        export_dataset([_raw("a")], CLASSES, tmp_path / "no" / "d")


def test_bad_size(tmp_path):
    with pytest.raises(IvdsegError, match="multiple of 16"):
        export_dataset([_raw("a")], CLASSES, tmp_path / "d", ExportOptions(sizes=(100,)))


@pytest.fixture
def small_dataset(tmp_path):
    export_dataset([_raw(f"p{i}", seed=i) for i in range(4)], CLASSES, tmp_path / "d", ExportOptions(sizes=(32,)))
    return tmp_path / "d"


def test_unknown_format_version(small_dataset):
    meta = json.loads((small_dataset / "dataset.json").read_text())
    meta["format_version"] = 99
    (small_dataset / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(IvdsegError, match="format version 99"):
        ds.open_dataset(small_dataset)


def test_patient_on_both_sides_of_the_split(small_dataset):
    splits = json.loads((small_dataset / "splits.json").read_text())
    splits["val"].append(splits["train"][0])
    (small_dataset / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(IvdsegError, match="both train and val"):
        ds.open_dataset(small_dataset)


def test_pickled_npz_is_refused(small_dataset):
    info = ds.open_dataset(small_dataset)
    case = sorted(info.cases)[0]
    np.savez(small_dataset / "32" / f"{case}.npz", image=np.array([{"evil": 1}], dtype=object),
             label=np.zeros(1))
    with pytest.raises(IvdsegError, match="pickled Python objects"):
        ds.load_resized(info, [case], 32)


def test_not_a_dataset(tmp_path):
    with pytest.raises(IvdsegError, match="dataset.json is missing"):
        ds.open_dataset(tmp_path)


# ------------------------------------------------------------------ real data
def test_real_sources_export(tmp_path):
    """The three real sources of the bundled model: classes mapped, slices sagittal, spacing kept."""
    root = require_data(".")
    lumbar = SourceSpec(name="ivd", kind="volumes", images="ivd_lumbar_t2/nifti/case11_T2w.nii.gz",
                        labels="ivd_lumbar_t2/nifti/{patient}_ivd_labels.nii.gz", patient_pattern=r"^(case\d+)_",
                        class_map={"intervertebral disc": [1, 2, 3, 4, 5]}, root=root)
    spider = SourceSpec(name="spider", kind="slices", images="spider_t2_2d/images/5_t2_SPACE_slice5*.png",
                        labels="spider_t2_2d/labels/{name}", patient_pattern=r"^(\d+)_",
                        class_map={"intervertebral disc": [2]}, root=root)
    (case,) = list(iter_source_cases(lumbar, CLASSES))
    assert case.image.shape == (67, 221, 221) and case.pixel_spacing_mm == (1.0, 1.0)
    (sp,) = list(iter_source_cases(spider, CLASSES))
    assert sp.image.shape[1:] == (640, 512) and set(np.unique(sp.label)) == {0, 1}
    info = export_dataset([case, sp], CLASSES, tmp_path / "d", ExportOptions(sizes=(64,)))
    assert {m["source"] for m in info.cases.values()} == {"ivd", "spider"}
    lumbar_meta = next(m for m in info.cases.values() if m["source"] == "ivd")
    assert 0 < lumbar_meta["labelled_slices"] < 67  # lateral slices without disc are kept


@pytest.mark.parametrize("classes", [["disc"], {"disc": 2}, {"disc": ["2"]}, {"disc": []}, {"disc": [True]}])
def test_a_source_with_malformed_classes_is_one_sentence(classes, tmp_path):
    spec = {"name": "s", "kind": "volumes", "images": "*.nii.gz", "labels": "{stem}", "classes": classes}
    with pytest.raises(IvdsegError, match="list of integer label values"):
        SourceSpec.from_dict(spec, tmp_path)


@pytest.mark.parametrize("pairs, message", [
    ({"image": "a.nrrd"}, "must be a list"),
    ([{"image": "a.nrrd", "label": "b.nrrd"}], "needs 'image', 'label' and 'patient'"),
    ([], "lists no pairs"),
])
def test_a_pairs_source_names_what_it_lacks(pairs, message, tmp_path):
    spec = {"name": "scene", "kind": "pairs", "pairs": pairs, "classes": {"disc": [1]}}
    with pytest.raises(IvdsegError, match=re.escape(message)):
        iter_source_cases(SourceSpec.from_dict(spec, tmp_path), ["disc"])


def test_the_dataset_folder_is_private_and_its_files_are_not_world_writable(tmp_path):
    import os
    import stat

    cases = [RawCase(patient=f"p{n}", source="s", image=np.ones((1, 32, 32), np.float32),
                     label=np.pad(np.ones((1, 8, 8), np.uint8), ((0, 0), (12, 12), (12, 12)))) for n in range(3)]
    info = export_dataset(cases, ["disc"], tmp_path / "ds", ExportOptions(sizes=(32,), val_fraction=0.34))
    assert stat.S_IMODE(os.stat(info.root).st_mode) == 0o700  # derived from patients: the owner's alone
    for path in (info.root / "dataset.json", info.root / "splits.json"):
        assert not stat.S_IMODE(os.stat(path).st_mode) & 0o022
