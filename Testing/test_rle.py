"""RLE mask tables: the codec and the CSV writer."""

from __future__ import annotations

import re

import numpy as np
import pytest

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
