"""RLE mask tables: the codec, the CSV writer, and ``rle_csv`` sources of ``ivdseg export`` (UW-Madison layout)."""

from __future__ import annotations

import csv
import json
import re

import cv2
import numpy as np
import pytest
from conftest import require_data

from ivdseg import cli
from ivdseg.data import dataset as ds
from ivdseg.data.export import ExportOptions, RawCase, SourceSpec, export_dataset, iter_source_cases, pseudonym
from ivdseg.data.labels import class_masks
from ivdseg.data.rle import decode_rle, encode_rle, rle_rows, write_rle_csv
from ivdseg.errors import IvdsegError

# ------------------------------------------------------------------ codec
MASK_3X4 = np.array([[0, 1, 1, 0],
                     [0, 0, 1, 1],
                     [1, 0, 0, 0]], bool)


@pytest.mark.parametrize("order, rle", [("row-major", "2 2 7 3"), ("column-major", "3 2 7 2 11 1")])
def test_a_3x4_mask_and_its_rle_by_hand(order, rle):
    assert encode_rle(MASK_3X4, order) == rle
    np.testing.assert_array_equal(decode_rle(rle, (3, 4), order), MASK_3X4)


def test_empty_and_full_masks_and_touching_runs():
    assert encode_rle(np.zeros((3, 4))) == "" and not decode_rle("", (3, 4)).any() and not decode_rle(" ", (3, 4)).any()
    assert encode_rle(np.ones((3, 4), np.uint8)) == "1 12" and decode_rle("1 12", (3, 4)).all()
    np.testing.assert_array_equal(decode_rle("1 2 3 2", (3, 4)), decode_rle("1 4", (3, 4)))  # touching runs join


@pytest.mark.parametrize("order", ["row-major", "column-major"])
def test_decode_of_encode_is_the_mask(order):
    rng = np.random.default_rng(0)
    for n in range(30):
        shape = tuple(rng.integers(1, 40, 2))
        mask = rng.random(shape) < rng.choice([0.02, 0.5, 0.98])
        rle = encode_rle(mask, order)
        np.testing.assert_array_equal(decode_rle(rle, shape, order), mask)
        assert rle == encode_rle(decode_rle(rle, shape, order), order)


@pytest.mark.parametrize("rle, message", [
    ("2 2 7", "odd number of values (3)"),
    ("2 0", "run length 0 at start 2"),
    ("2 -3", "run length -3 at start 2"),
    ("0 2", "start 0"),
    ("7 2 2 2", "run at 2 after the run at 7"),
    ("2 3 4 1", "run at 4 after the run at 2 of length 3"),
    ("11 3", "past the 4x3 image's 12 pixels"),
    ("2 x", "'x', which is not a whole number"),
])
def test_malformed_rle_is_a_clause_for_the_row(rle, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        decode_rle(rle, (3, 4))


def test_unknown_order_is_refused():
    with pytest.raises(ValueError, match="row-major, column-major"):
        encode_rle(MASK_3X4, "diagonal")


def test_write_rle_csv_writes_the_table_layout_atomically(tmp_path):
    rows = rle_rows("case1_day2_slice_0003", {"stomach": MASK_3X4, "large_bowel": np.zeros((3, 4))})
    path = write_rle_csv(tmp_path / "out.csv", rows)
    assert path.read_text() == "id,class,segmentation\ncase1_day2_slice_0003,stomach,2 2 7 3\n" \
                               "case1_day2_slice_0003,large_bowel,\n"
    with pytest.raises(IvdsegError, match="already exists"):
        write_rle_csv(path, [])
    write_rle_csv(path, [("a", "b", "1 1")], overwrite=True, columns=("image", "organ", "rle"))
    assert path.read_text() == "image,organ,rle\na,b,1 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


# ------------------------------------------------------------------ a UW-Madison-like tree
TABLE_CLASSES = ["large_bowel", "small_bowel", "stomach"]
CLASSES = ["stomach", "large bowel", "small bowel"]
CLASS_MAP = {"stomach": ["stomach"], "large bowel": ["large_bowel"], "small bowel": ["small_bowel"]}
# PROVENANCE.md's colours (RGB) as OpenCV reads them (BGR), in the order background, then each table class
PALETTE_BGR = np.array([(0, 0, 0), (0, 200, 0), (0, 255, 255), (0, 0, 255)])
PICKS = ["case101_day20_slice_0078", "case101_day20_slice_0110", "case101_day22_slice_0070",
         "case101_day26_slice_0106", "case113_day12_slice_0054", "case113_day12_slice_0068",
         "case113_day16_slice_0058", "case117_day0_slice_0072", "case117_day0_slice_0074", "case117_day0_slice_0093",
         "case117_day15_slice_0028", "case118_day14_slice_0097", "case118_day16_slice_0074",
         "case119_day0_slice_0081", "case119_day19_slice_0067", "case121_day14_slice_0086",
         "case121_day16_slice_0059"]
EMPTY = {"case101_day20_slice_0001": "case101_day20_slice_0078", "case117_day0_slice_0002": "case117_day0_slice_0072"}
OVERLAP_ID = "case117_day0_slice_0093"
H, W = 80, 96  # not square, so that width and height cannot be swapped unseen
SPACING_X, SPACING_Y = 1.50, 1.63


def _png_path(root, image_id, h=H, w=W):
    case, day, _, number = image_id.split("_")
    name = f"slice_{number}_{w}_{h}_{SPACING_X:.2f}_{SPACING_Y:.2f}.png"
    return root / "train" / case / f"{case}_{day}" / "scans" / name


def _write_png(root, image_id, image):
    path = _png_path(root, image_id, *image.shape[:2])
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


def _disc(cy, cx, r):
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2


def _gi_slice(folder, image_id):
    """A 16-bit greyscale image (H, W) and {table class: (H, W) bool} from a colour mask, by nearest colour."""
    bgr = cv2.imread(str(folder / "images" / f"{image_id}.png"))
    grey = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), (W, H), interpolation=cv2.INTER_AREA)
    colours = cv2.imread(str(folder / "masks" / f"{image_id}.png")).astype(np.int32)
    nearest = ((colours[..., None, :] - PALETTE_BGR) ** 2).sum(-1).argmin(-1).astype(np.uint8)
    nearest = cv2.resize(nearest, (W, H), interpolation=cv2.INTER_NEAREST)
    return grey.astype(np.uint16) * 200 + 7, {c: nearest == k + 1 for k, c in enumerate(TABLE_CLASSES)}


@pytest.fixture(scope="module")
def uw_tree(tmp_path_factory):
    """train.csv + train/caseN/caseN_dayM/scans/slice_XXXX_W_H_SX_SY.png; returns (root, {id: (image, masks)})."""
    folder = require_data("gi_tract_png")
    root = tmp_path_factory.mktemp("uwmgi")
    truth = {image_id: _gi_slice(folder, image_id) for image_id in PICKS}
    for image_id, like in EMPTY.items():
        truth[image_id] = (truth[like][0] // 2, {c: np.zeros((H, W), bool) for c in TABLE_CLASSES})
    masks = truth[OVERLAP_ID][1]  # two discs that share pixels: stomach and large bowel at once
    masks["stomach"] = masks["stomach"] | _disc(30, 40, 12)
    masks["large_bowel"] = masks["large_bowel"] | _disc(30, 52, 12)
    rows = []
    for image_id, (image, masks) in truth.items():
        _write_png(root, image_id, image)
        rows += rle_rows(image_id, masks)
    order = np.random.default_rng(1).permutation(len(rows))  # the table's order must not matter
    write_rle_csv(root / "train.csv", [rows[i] for i in order])
    return root, truth


def _spec(root, **keys):
    return {"name": "uwmgi", "kind": "rle_csv", "root": str(root), "classes": CLASS_MAP, **keys}


def _series_of(truth):
    """(case, day) -> ids sorted by slice number, in the order the source yields them."""
    series = {}
    for image_id in truth:
        case, day, _, _ = image_id.split("_")
        series.setdefault((case, day), []).append(image_id)
    key = lambda cd: (int(cd[0][4:]), int(cd[1][3:]))  # noqa: E731
    return {cd: sorted(series[cd], key=lambda i: int(i[-4:])) for cd in sorted(series, key=key)}


def test_uw_madison_tree_exports_overlapping_classes_by_case(uw_tree, tmp_path, capsys):
    root, truth = uw_tree
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"classes": CLASSES, "overlapping": True, "sources": [_spec(root)]}))
    code = cli.main([str(a) for a in ["export", tmp_path / "d", "--spec", spec, "--sizes", "32", "--val-fraction",
                                      "0.2", "--test-fraction", "0.2", "--pseudonym-key-file", tmp_path / "key",
                                      "--progress", "jsonl"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    info = ds.open_dataset(tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert info.overlapping and meta["overlapping"] is True and meta["slice_plane"] == info.slice_plane == "as stored"
    key = (tmp_path / "key").read_bytes()

    series = _series_of(truth)
    assert len(info.cases) == len(series) == 13
    parts = {part: set(info.splits[part]) for part in ("train", "val", "test")}
    seen = {}
    for (case, day), ids in series.items():
        pid = pseudonym(key, "uwmgi", case)
        k = seen[pid] = seen.get(pid, -1) + 1
        case_meta = info.cases[f"{pid}-{k}"]
        assert case_meta["patient"] == pid and case_meta["n_slices"] == len(ids)
        numbers = [int(i[-4:]) for i in ids]
        assert case_meta["slice_order"] == "slice number"
        assert case_meta["missing_slices"] == numbers[-1] - numbers[0] + 1 - len(numbers)
        native = ds.load_npz(tmp_path / "d" / "cases" / f"{pid}-{k}.npz")
        assert native["image"].dtype == np.uint16  # read unchanged
        np.testing.assert_array_equal(native["image"], np.stack([truth[i][0] for i in ids]))
        np.testing.assert_allclose(native["pixel_spacing_mm"], [SPACING_Y, SPACING_X])  # (row, col)
        decoded = class_masks(native["label"], 4, overlapping=True)
        for c, name in enumerate(CLASSES, start=1):
            table_class = CLASS_MAP[name][0]
            np.testing.assert_array_equal(decoded[..., c], np.stack([truth[i][1][table_class] for i in ids]))
        small = ds.load_npz(tmp_path / "d" / "32" / f"{pid}-{k}.npz")
        assert small["mask"].shape == (len(ids), 32, 32, 4)
        np.testing.assert_array_equal(small["mask"], class_masks(small["label"], 4, overlapping=True))
        if OVERLAP_ID in ids:  # stomach and large bowel both kept where they overlap
            assert (small["mask"][ids.index(OVERLAP_ID)][..., 1:3].sum(-1) == 2).any()
    days = {pid: n + 1 for pid, n in seen.items()}
    assert days[pseudonym(key, "uwmgi", "case101")] == 3  # three days of case101: one patient, three series
    for pid in days:  # every case (all its days) in exactly one part of the split
        assert sum(pid in members for members in parts.values()) == 1
    assert all(parts.values())

    source = meta["sources"]["uwmgi"]
    without = {name: sum(not truth[i][1][CLASS_MAP[name][0]].any() for i in truth) for name in CLASSES}
    none = sum(not any(m.any() for m in truth[i][1].values()) for i in truth)
    assert none >= 2 and source["slices"] == len(truth) and source["patients"] == 6
    assert source["slices_without_class"] == without and source["slices_without_any_class"] == none
    events = [json.loads(line) for line in out.splitlines()]
    said = [e["text"] for e in events if e["event"] == "message"]
    assert f"{len(truth)} slices, {none} of them without any mask" in said[-1]
    assert f"{without['stomach']} without stomach" in said[-1]
    assert events[-1]["empty_slices"]["uwmgi"]["without_class"] == without


def test_without_overlapping_an_overlap_names_the_id(uw_tree):
    root, _ = uw_tree
    spec = SourceSpec.from_dict(_spec(root), root)
    with pytest.raises(IvdsegError, match=f"on id '{OVERLAP_ID}' the classes 'stomach' and 'large bowel' overlap in "
                                          r"\d+ pixels; set \"overlapping\": true"):
        list(iter_source_cases(spec, CLASSES))


def test_drop_unlabelled_counts_what_it_dropped(uw_tree, tmp_path):
    root, truth = uw_tree
    cases = iter_source_cases(SourceSpec.from_dict(_spec(root), root), CLASSES, overlapping=True)
    info = export_dataset(cases, CLASSES, tmp_path / "d",
                          ExportOptions(sizes=(32,), overlapping=True, keep_unlabelled=False))
    source = info.sources["uwmgi"]
    none = sum(not any(m.any() for m in truth[i][1].values()) for i in truth)
    assert source["dropped_unlabelled_slices"] == none and source["slices"] == len(truth) - none
    assert source["slices_without_any_class"] == 0


# ------------------------------------------------------------------ small synthetic tables
def _table(root, rows, images, header=("id", "class", "segmentation"), spec=None):
    """Writes images {id: array} at the UW-Madison paths and the rows; returns the source's RawCases (a list)."""
    for image_id, image in images.items():
        _write_png(root, image_id, image)
    with open(root / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    source = SourceSpec.from_dict(spec or {"name": "s", "kind": "rle_csv", "root": str(root),
                                           "classes": {"stomach": ["stomach"]}}, root)
    return list(iter_source_cases(source, ["stomach"]))


IMAGE = np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000
ID = "case1_day1_slice_0001"


def test_a_small_table_and_its_column_major_twin(tmp_path):
    (case,) = _table(tmp_path, [(ID, "stomach", "2 2 7 3")], {ID: IMAGE})
    assert case.patient == "case1" and case.slice_plane == "as stored"
    np.testing.assert_array_equal(case.label[0] > 0, decode_rle("2 2 7 3", (4, 5)))
    spec = {"name": "s", "kind": "rle_csv", "root": str(tmp_path), "classes": {"stomach": ["stomach"]},
            "rle_order": "column-major", "columns": {"id": "image", "rle": "mask"}}
    (twin,) = _table(tmp_path, [(ID, "stomach", encode_rle(case.label[0], "column-major"))], {ID: IMAGE},
                     header=("image", "class", "mask"), spec=spec)
    np.testing.assert_array_equal(twin.label, case.label)


def test_ignored_classes_and_custom_layout(tmp_path):
    spec = {"name": "s", "kind": "rle_csv", "root": str(tmp_path), "classes": {"stomach": ["stomach"]},
            "ignore_classes": ["liver"], "id_pattern": r"^p(?P<case>\d+)_s(?P<slice>\d+)$",
            "image_template": "img/{case}_{slice}.png", "name_pattern": None}
    (tmp_path / "img").mkdir()
    for n in (2, 1):
        cv2.imwrite(str(tmp_path / "img" / f"7_{n}.png"), IMAGE + n)
    rows = [("p7_s2", "stomach", "1 3"), ("p7_s2", "liver", "4 2"), ("p7_s1", "stomach", "")]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "class", "segmentation"), *rows])
    (case,) = list(iter_source_cases(SourceSpec.from_dict(spec, tmp_path), ["stomach"]))
    np.testing.assert_array_equal(case.image[:, 0, 0], [1, 2])  # sorted by slice number
    assert case.label[0].sum() == 0 and case.label[1].sum() == 3 and np.isnan(case.pixel_spacing_mm).all()


@pytest.mark.parametrize("rle, message", [
    ("19 3", "line 2 (id 'case1_day1_slice_0001', class 'stomach'): the RLE has a run (19 3) that ends at pixel 21, "
             "past the 5x4 image's 20 pixels."),
    ("1 2 3", "line 2 (id 'case1_day1_slice_0001', class 'stomach'): the RLE has an odd number of values (3)"),
    ("3 0", "line 2 (id 'case1_day1_slice_0001', class 'stomach'): the RLE has the run length 0 at start 3"),
    ("5 2 1 1", "line 2 (id 'case1_day1_slice_0001', class 'stomach'): the RLE has the run at 1 after the run at 5"),
    ("1 3 2 1", "must not overlap"),
])
def test_a_bad_rle_names_the_line_and_the_id(rle, message, tmp_path):
    with pytest.raises(IvdsegError, match=re.escape(message)):
        _table(tmp_path, [(ID, "stomach", rle)], {ID: IMAGE})


def test_bad_rows_are_one_sentence_each(tmp_path):
    ok = (ID, "stomach", "1 1")
    with pytest.raises(IvdsegError, match=r"train.csv lacks the column\(s\) 'class', 'segmentation' \(its header is "
                                          r"id,organ,rle\); name the columns"):
        _table(tmp_path, [ok], {ID: IMAGE}, header=("id", "organ", "rle"))
    with pytest.raises(IvdsegError, match=r"line 3 \(id 'case1_day1_slice_0001'\) has the class 'liver', which no "
                                          "output class of source 's' names"):
        _table(tmp_path, [ok, (ID, "liver", "1 1")], {ID: IMAGE})
    with pytest.raises(IvdsegError, match=r"line 2: the id 'patient7_slice3' does not match the id pattern"):
        _table(tmp_path, [("patient7_slice3", "stomach", "")], {})
    with pytest.raises(IvdsegError, match=r"line 3 repeats id 'case1_day1_slice_0001' with class 'stomach' \(first "
                                          r"on line 2\)"):
        _table(tmp_path, [ok, ok], {ID: IMAGE})
    with pytest.raises(IvdsegError, match="has no rows"):
        _table(tmp_path, [], {})


def test_missing_image_names_the_id_and_the_pattern_and_leaves_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    other = "case2_day1_slice_0001"
    _write_png(src, other, IMAGE)
    with open(src / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "class", "segmentation"), (other, "stomach", "1 4"), (ID, "stomach", "")])
    spec = SourceSpec.from_dict({"name": "s", "kind": "rle_csv", "root": str(src),
                                 "classes": {"stomach": ["stomach"]}}, src)
    expected = str(src / "train" / "case1" / "case1_day1" / "scans" / "slice_0001_*.png")
    with pytest.raises(IvdsegError, match=re.escape(f"No image for id '{ID}' ({src / 'train.csv'} line 3): nothing "
                                                    f"matches {expected}")):
        export_dataset(iter_source_cases(spec, ["stomach"]), ["stomach"], tmp_path / "d", ExportOptions(sizes=(32,)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no dataset, no staging folder


def test_images_of_one_case_day_must_share_a_size_and_match_their_names(tmp_path):
    second = "case1_day1_slice_0002"
    with pytest.raises(IvdsegError, match=re.escape("The images of case1_day1 differ in size or pixel spacing "
                                                    "(slice_0001_5_4_1.50_1.63.png is 5x4, "
                                                    "slice_0002_6_4_1.50_1.63.png is 6x4)")):
        _table(tmp_path, [(ID, "stomach", ""), (second, "stomach", "")],
               {ID: IMAGE, second: np.zeros((4, 6), np.uint16)})
    lying = _png_path(tmp_path / "b", ID, 4, 6)  # says 6x4, holds 5x4
    lying.parent.mkdir(parents=True)
    cv2.imwrite(str(lying), IMAGE)
    with open(tmp_path / "b" / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "class", "segmentation"), (ID, "stomach", "")])
    spec = {"name": "s", "kind": "rle_csv", "root": str(tmp_path / "b"), "classes": {"stomach": ["stomach"]}}
    with pytest.raises(IvdsegError, match=r"is 5x4 pixels but its name says 6x4 \(width x height\)"):
        list(iter_source_cases(SourceSpec.from_dict(spec, tmp_path), ["stomach"]))


def test_a_colour_image_is_refused(tmp_path):
    with pytest.raises(IvdsegError, match="has 3 channels; an RLE source needs greyscale images"):
        _table(tmp_path, [(ID, "stomach", "")], {ID: np.dstack([IMAGE.astype(np.uint8)] * 3)})


@pytest.mark.parametrize("keys, message", [
    ({"images": "x"}, "unknown key(s) ['images']"),
    ({"rle_order": "diagonal"}, "'rle_order' must be one of row-major, column-major"),
    ({"classes": {"stomach": "stomach"}}, "list of the table's class names"),
    ({"classes": {"stomach": [1]}}, "list of the table's class names"),
    ({"columns": {"rle_mask": "x"}}, "'columns' may rename the columns id, class and rle"),
    ({"id_pattern": r"(?P<case>\w+)"}, "'id_pattern' needs the named groups case and slice"),
    ({"id_pattern": "("}, "'id_pattern' is not a valid regular expression"),
    ({"image_template": "{patient}/{slice}.png"}, "'image_template' uses ['patient']"),
    ({"name_pattern": r"_(?P<width>\d+)\.png"}, "width and height, spacing_x and spacing_y (in pairs)"),
    ({"ignore_classes": ["stomach"]}, "'stomach' is both mapped and ignored"),
])
def test_bad_spec_keys_are_one_sentence(keys, message, tmp_path):
    with pytest.raises(IvdsegError, match=re.escape(message)):
        SourceSpec.from_dict({"name": "s", "kind": "rle_csv", "classes": {"stomach": ["stomach"]}, **keys}, tmp_path)


def test_a_dataset_holds_one_slice_plane(tmp_path):
    label = np.pad(np.ones((1, 4, 4), np.uint8), ((0, 0), (2, 2), (2, 2)))
    cases = [RawCase(patient="a", source="spine", image=np.ones((1, 8, 8)), label=label),
             RawCase(patient="b", source="gi", image=np.ones((1, 8, 8)), label=label, slice_plane="as stored")]
    with pytest.raises(IvdsegError, match="Source 'spine' gives sagittal slices and source 'gi' as stored slices; a "
                                          "dataset holds one slice plane"):
        export_dataset(cases, ["x"], tmp_path / "d", ExportOptions(sizes=(32,)))
    assert list(tmp_path.iterdir()) == []


def test_the_spec_says_overlapping_with_true_or_false(tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"classes": ["stomach"], "overlapping": "yes",
                                "sources": [{"name": "s", "kind": "rle_csv", "classes": {"stomach": ["stomach"]}}]}))
    assert cli.main(["export", str(tmp_path / "d"), "--spec", str(spec), "--progress", "none"]) == 2
    assert "'overlapping' must be true or false, not 'yes'" in capsys.readouterr().err
