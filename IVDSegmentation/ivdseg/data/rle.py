"""Run-length encoding (RLE) of binary masks, as Kaggle segmentation tables store them, and the CSV that holds them.

The convention (UW-Madison GI tract and most Kaggle challenges): a mask is a string of space-separated pairs
``start length``; ``start`` is 1-based and counts the pixels of the flattened image, ``length`` is the number of
mask pixels from there on. An empty string is an empty mask. How the image is flattened is the ``order``:

* ``"row-major"`` (UW-Madison's): left to right, then top to bottom (numpy's C order of an (H, W) array);
* ``"column-major"`` (e.g. some older Kaggle challenges): top to bottom, then left to right (Fortran order).

Example, a 3x4 mask (H=3, W=4)::

    0 1 1 0
    0 0 1 1      row-major "2 2 7 3", column-major "3 2 7 2 11 1"
    1 0 0 0

The table (``write_rle_csv``): one row per image id and class, columns ``id,class,segmentation``, an empty
``segmentation`` cell where the class has no pixel on that image.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ivdseg.io.atomic import atomic_write

RLE_ORDERS = ("row-major", "column-major")
CSV_COLUMNS = ("id", "class", "segmentation")  # UW-Madison's header


def _numpy_order(order: str) -> str:
    if order not in RLE_ORDERS:
        raise ValueError(f"the RLE order must be one of {', '.join(RLE_ORDERS)}, not {order!r}")
    return "C" if order == "row-major" else "F"


def decode_rle(rle: str, shape_hw: tuple[int, int], order: str = "row-major") -> np.ndarray:
    """RLE string -> (H, W) bool mask.

    Args:
        rle: space-separated ``start length`` pairs, starts 1-based, runs sorted and disjoint (touching runs are
            accepted); empty or blank: no pixel.
        shape_hw: (H, W) of the image the mask belongs to.
        order: how pixels are numbered, one of :data:`RLE_ORDERS`.

    Returns:
        (H, W) bool.

    Raises:
        ValueError: a value that is not a whole number, an odd number of values, a start below 1, a length below 1,
            runs out of order or overlapping, a run past the image's H * W pixels, or an unknown order. The message
            is a clause about the RLE (e.g. "has an odd number of values (3)"), for the caller to put after the row
            it read.
    """
    np_order = _numpy_order(order)
    h, w = (int(v) for v in shape_hw)
    tokens = rle.split()
    if not tokens:
        return np.zeros((h, w), bool)
    numbers = []
    for token in tokens:
        try:
            numbers.append(int(token))
        except ValueError:
            raise ValueError(f"holds {token!r}, which is not a whole number") from None
    values = np.array(numbers, np.int64)
    if len(values) % 2:
        raise ValueError(f"has an odd number of values ({len(values)}); it needs start/length pairs")
    starts, lengths = values[0::2], values[1::2]
    if starts.min() < 1:
        raise ValueError(f"has the start {starts.min()}; starts count the pixels from 1")
    if lengths.min() < 1:
        k = int(np.argmin(lengths))
        raise ValueError(f"has the run length {lengths[k]} at start {starts[k]}; lengths must be at least 1")
    ends = starts + lengths  # 1-based, exclusive
    crossing = np.nonzero(starts[1:] < ends[:-1])[0]
    if len(crossing):
        k = int(crossing[0])
        raise ValueError(f"has the run at {starts[k + 1]} after the run at {starts[k]} of length {lengths[k]}; "
                         "runs must be sorted and must not overlap")
    if ends[-1] - 1 > h * w:
        raise ValueError(f"has a run ({starts[-1]} {lengths[-1]}) that ends at pixel {ends[-1] - 1}, past the "
                         f"{w}x{h} image's {h * w} pixels")
    change = np.zeros(h * w + 1, np.int8)
    np.add.at(change, starts - 1, 1)
    np.add.at(change, ends - 1, -1)  # a run that touches the next one cancels out to 0 here, as it should
    flat = np.cumsum(change[:-1], dtype=np.int8) > 0
    return flat.reshape((h, w), order=np_order)


def encode_rle(mask: np.ndarray, order: str = "row-major") -> str:
    """(H, W) mask (any dtype; nonzero = inside) -> RLE string, the shortest one (no touching runs).

    ``decode_rle(encode_rle(m, order), m.shape, order) == (m != 0)`` for either order.

    Args:
        mask: (H, W) array.
        order: how pixels are numbered, one of :data:`RLE_ORDERS`.

    Returns:
        ``"start length start length ..."``; ``""`` for an empty mask.

    Raises:
        ValueError: ``mask`` is not 2D, or an unknown order.
    """
    np_order = _numpy_order(order)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle needs an (H, W) mask, got shape {mask.shape}")
    flat = np.concatenate([[False], mask.ravel(order=np_order) != 0, [False]])
    edges = np.nonzero(flat[1:] != flat[:-1])[0]  # 0-based: starts at even places, exclusive ends at odd ones
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.stack([starts + 1, ends - starts], axis=1).reshape(-1)
    return " ".join(map(str, pairs.tolist()))


def rle_rows(image_id: str, masks: Mapping[str, np.ndarray], order: str = "row-major") -> list[tuple[str, str, str]]:
    """The table rows of one image: ``(image_id, class name, RLE)`` per class, in the order of ``masks``.

    A class without any pixel gets an empty RLE (UW-Madison writes a row for every class of every image).

    Args:
        image_id: the id the table knows the image by, e.g. ``"case123_day20_slice_0065"``.
        masks: class name (as the table spells it, e.g. ``"large_bowel"``) -> (H, W) mask.
        order: how pixels are numbered, one of :data:`RLE_ORDERS`.
    """
    return [(image_id, name, encode_rle(mask, order)) for name, mask in masks.items()]


def write_rle_csv(path, rows: Iterable[tuple[str, str, str]], overwrite: bool = False,
                  columns: tuple[str, str, str] = CSV_COLUMNS) -> Path:
    """Writes an RLE table atomically (:func:`ivdseg.io.atomic.atomic_write`): a header, then one line per row.

    Args:
        path: the CSV file to write.
        rows: ``(image id, class name, RLE string)`` tuples, e.g. from :func:`rle_rows`; written in this order.
        overwrite: replace an existing file.
        columns: the header (id, class and RLE column names); UW-Madison's by default.

    Returns:
        The path written.

    Raises:
        IvdsegError: the file exists and not ``overwrite``, its folder is missing or not writable, or the write
            failed (nothing is left half-written).
    """
    rows = [tuple(map(str, row)) for row in rows]
    bad = next((row for row in rows if len(row) != 3), None)
    if bad is not None:
        raise ValueError(f"an RLE table row needs (id, class, rle), got {bad!r}")

    def write(temp: Path) -> None:
        with open(temp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f, lineterminator="\n")
            out.writerow(columns)
            out.writerows(rows)

    return atomic_write(path, write, overwrite=overwrite)
