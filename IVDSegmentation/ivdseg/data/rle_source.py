"""RLE mask tables as a source of ``ivdseg export`` (kind ``"rle_csv"``): Kaggle's layout, UW-Madison's by default.

A table (CSV) has one row per image id and class; its RLE cell (:mod:`ivdseg.data.rle`) is empty where the class
has no pixel on that image, and an id without a row for a class has no mask of it either. Each id names an image
file through ``id_pattern`` (named groups) and ``image_template``. Ids of one ``case`` are one patient (every
day of a case stays in one part of the split); the slices of one case-day are one series (RawCase), sorted by
slice number, so that neighbours in the stack are neighbours in the body (gaps are counted per case).

Source keys of the export spec (only ``name``, ``kind`` and ``classes`` are needed for the UW-Madison download)::

    {"name": "uwmgi", "kind": "rle_csv", "root": "/data/uw-madison-gi-tract-image-segmentation",
     "classes": {"stomach": ["stomach"], "large bowel": ["large_bowel"], "small bowel": ["small_bowel"]},
     "csv": "train.csv",
     "columns": {"id": "id", "class": "class", "rle": "segmentation"},
     "id_pattern": "^(?P<case>case\\d+)_(?P<day>day\\d+)_slice_(?P<slice>\\d+)$",
     "image_template": "train/{case}/{case}_{day}/scans/slice_{slice}_*.png",
     "name_pattern": "_(?P<width>\\d+)_(?P<height>\\d+)_(?P<spacing_x>[0-9.]+)_(?P<spacing_y>[0-9.]+)\\.png$",
     "rle_order": "row-major",
     "ignore_classes": []}

* ``classes``: output class -> the table's class names that form it. A table class in no output class is an error
  (it would read as background) unless ``ignore_classes`` lists it.
* ``id_pattern``: regex searched in each id; named groups ``case`` (the patient) and ``slice`` (a number) are
  needed, ``day`` (the series within the case) is optional.
* ``image_template``: the image path relative to ``root``, with ``{case}``, ``{day}``, ``{slice}`` and ``{id}``;
  it may hold glob wildcards and must then match exactly one file.
* ``name_pattern``: regex on the image file name that reads its size in pixels (``width``, ``height``: checked
  against the image) and its pixel spacing in mm (``spacing_x`` along a row, ``spacing_y`` down a column); null:
  the names carry neither (spacing unknown). UW-Madison's names are ``slice_0065_<width>_<height>_<sx>_<sy>.png``.
* ``rle_order``: ``"row-major"`` (UW-Madison) or ``"column-major"``.

Images are read unchanged (UW-Madison's are 16-bit greyscale PNGs) and must be greyscale. Classes may overlap in
a table (UW-Madison's do): an export with ``"overlapping": true`` keeps every class as one bit; without it, an
overlap is an error naming the id, never silently resolved. The slices are 2D images as stored
(``slice_plane`` "as stored").
"""

from __future__ import annotations

import csv
import fnmatch
import glob
import os
import re
import string
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Iterator

import numpy as np

from ivdseg.data.sources import RawCase, SourceSpec
from ivdseg.data.labels import bits_from_masks
from ivdseg.data.rle import RLE_ORDERS, decode_rle
from ivdseg.errors import IvdsegError

DEFAULT_CSV = "train.csv"
DEFAULT_COLUMNS = {"id": "id", "class": "class", "rle": "segmentation"}
DEFAULT_ID_PATTERN = r"^(?P<case>case\d+)_(?P<day>day\d+)_slice_(?P<slice>\d+)$"
DEFAULT_IMAGE_TEMPLATE = "train/{case}/{case}_{day}/scans/slice_{slice}_*.png"
DEFAULT_NAME_PATTERN = r"_(?P<width>\d+)_(?P<height>\d+)_(?P<spacing_x>[0-9.]+)_(?P<spacing_y>[0-9.]+)\.png$"
SPEC_KEYS = {"name", "kind", "root", "classes", "csv", "columns", "id_pattern", "image_template", "name_pattern",
             "rle_order", "ignore_classes"}
NAME_GROUPS = ("width", "height", "spacing_x", "spacing_y")


@dataclass
class RleTable:
    """The settings of an ``rle_csv`` source (module docstring), checked.

    Attributes:
        class_map: output class name -> the table's class names that form it.
        csv: the table, relative to the source's root.
        columns: {"id": ..., "class": ..., "rle": ...} column names of the table.
        id_pattern: regex with the named groups case, slice and optionally day.
        image_template: image path per id, relative to the root (may hold glob wildcards).
        name_pattern: regex on the image file name for width, height, spacing_x, spacing_y; None: not in names.
        rle_order: "row-major" or "column-major".
        ignore_classes: table classes deliberately left out (their pixels become background).
    """

    class_map: dict[str, list[str]]
    csv: str = DEFAULT_CSV
    columns: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_COLUMNS))
    id_pattern: str = DEFAULT_ID_PATTERN
    image_template: str = DEFAULT_IMAGE_TEMPLATE
    name_pattern: str | None = DEFAULT_NAME_PATTERN
    rle_order: str = "row-major"
    ignore_classes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: dict) -> "RleTable":
        """Reads and checks a source's keys; raises IvdsegError naming the source and the key at fault."""
        name = d["name"]
        unknown = sorted(set(d) - SPEC_KEYS)
        if unknown:
            raise IvdsegError(f"Source {name!r} (kind rle_csv) has the unknown key(s) {unknown}; its keys are "
                              f"{sorted(SPEC_KEYS)}.")
        classes = d["classes"]
        if not isinstance(classes, dict) or not classes or not all(
                isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)
                for names in classes.values()):
            raise IvdsegError(f"Source {name!r}: 'classes' must map each output class to a list of the table's class "
                              f"names, e.g. {{\"large bowel\": [\"large_bowel\"]}}.")
        columns = d.get("columns", {})
        if not isinstance(columns, dict) or set(columns) - set(DEFAULT_COLUMNS) or not all(
                isinstance(c, str) and c for c in columns.values()):
            raise IvdsegError(f"Source {name!r}: 'columns' may rename the columns id, class and rle, e.g. "
                              f"{DEFAULT_COLUMNS}.")
        ignore = d.get("ignore_classes", [])
        if not isinstance(ignore, list) or not all(isinstance(c, str) for c in ignore):
            raise IvdsegError(f"Source {name!r}: 'ignore_classes' must be a list of the table's class names.")
        table = cls(class_map={k: list(v) for k, v in classes.items()}, csv=d.get("csv", DEFAULT_CSV),
                    columns={**DEFAULT_COLUMNS, **columns}, id_pattern=d.get("id_pattern", DEFAULT_ID_PATTERN),
                    image_template=d.get("image_template", DEFAULT_IMAGE_TEMPLATE),
                    name_pattern=d.get("name_pattern", DEFAULT_NAME_PATTERN),
                    rle_order=d.get("rle_order", "row-major"), ignore_classes=list(ignore))
        table._check(name)
        return table

    def _check(self, name: str) -> None:
        if not isinstance(self.csv, str) or not self.csv:
            raise IvdsegError(f"Source {name!r}: 'csv' must be the table's path, e.g. {DEFAULT_CSV!r}.")
        if self.rle_order not in RLE_ORDERS:
            raise IvdsegError(f"Source {name!r}: 'rle_order' must be one of {', '.join(RLE_ORDERS)}, not "
                              f"{self.rle_order!r}.")
        groups = _pattern_groups(name, "id_pattern", self.id_pattern)
        if not {"case", "slice"} <= groups:
            raise IvdsegError(f"Source {name!r}: 'id_pattern' needs the named groups case and slice (day is "
                              f"optional), e.g. {DEFAULT_ID_PATTERN!r}.")
        if not isinstance(self.image_template, str) or not self.image_template:
            raise IvdsegError(f"Source {name!r}: 'image_template' must be a path, e.g. {DEFAULT_IMAGE_TEMPLATE!r}.")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.image_template) if f is not None}
        except ValueError as exc:
            raise IvdsegError(f"Source {name!r}: 'image_template' is not a valid template ({exc}).") from None
        if fields - (groups | {"id"}):
            raise IvdsegError(f"Source {name!r}: 'image_template' uses {sorted(fields - (groups | {'id'}))}, which "
                              f"the id pattern does not give; it may use {sorted(groups | {'id'})}.")
        if self.name_pattern is not None:
            found = _pattern_groups(name, "name_pattern", self.name_pattern)
            if not found <= set(NAME_GROUPS) or len(found & {"width", "height"}) == 1 \
                    or len(found & {"spacing_x", "spacing_y"}) == 1:
                raise IvdsegError(f"Source {name!r}: 'name_pattern' may have the named groups width and height, "
                                  "spacing_x and spacing_y (in pairs), or be null.")
        outputs = [n for names in self.class_map.values() for n in names]
        both = sorted(set(outputs) & set(self.ignore_classes))
        if both:
            raise IvdsegError(f"Source {name!r}: the table class {both[0]!r} is both mapped and ignored.")

    def outputs_of(self, table_class: str) -> list[str]:
        """The output classes that a table class is part of."""
        return [out for out, names in self.class_map.items() if table_class in names]


def _pattern_groups(name: str, key: str, pattern) -> set[str]:
    if not isinstance(pattern, str):
        raise IvdsegError(f"Source {name!r}: {key!r} must be a regular expression (a string).")
    try:
        return set(re.compile(pattern).groupindex)
    except re.error as exc:
        raise IvdsegError(f"Source {name!r}: {key!r} is not a valid regular expression ({exc}).") from None


@dataclass
class _Slice:
    """One id of the table: where it was first seen and its RLE per table class (with the line of each)."""

    image_id: str
    line: int
    groups: dict[str, str]
    rles: dict[str, tuple[int, str]] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return int(self.groups["slice"])


def read_table(path: Path, table: RleTable, source: str) -> dict[tuple[str, str], list[_Slice]]:
    """Reads and checks every row of an RLE table (not the RLEs themselves, which need the image's size).

    Returns:
        (case, day) -> its slices sorted by slice number; day is "" when the id pattern has none.

    Raises:
        IvdsegError: the table is missing or unreadable, lacks a needed column, or has a row without an id, an id
            that does not match the id pattern, a class that no output class names (and not ignored), or an id and
            class given twice; each names the line.
    """
    id_re = re.compile(table.id_pattern)
    known = {n for names in table.class_map.values() for n in names}
    slices: dict[str, _Slice] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None) or []
            missing = [c for c in table.columns.values() if c not in header]
            if missing:
                raise IvdsegError(f"{path} lacks the column(s) {', '.join(map(repr, missing))} (its header is "
                                  f"{','.join(header) or 'empty'}); name the columns in the source's 'columns'.")
            at = {key: header.index(column) for key, column in table.columns.items()}
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                cell = {key: (row[i].strip() if i < len(row) else "") for key, i in at.items()}
                _add_row(slices, cell, reader.line_num, id_re, known, table, path, source)
    except FileNotFoundError:
        raise IvdsegError(f"The RLE table {path} of source {source!r} does not exist; fix 'root' or 'csv'.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise IvdsegError(f"The RLE table {path} cannot be read ({exc}).") from None
    if not slices:
        raise IvdsegError(f"The RLE table {path} has no rows; source {source!r} gives nothing to export.")
    series: dict[tuple[str, str], list[_Slice]] = {}
    for s in slices.values():
        series.setdefault((s.groups["case"], s.groups.get("day") or ""), []).append(s)
    return {key: sorted(series[key], key=lambda s: s.number)
            for key in sorted(series, key=lambda k: (_natural(k[0]), _natural(k[1])))}


def _natural(text: str) -> list:
    """Sort key that puts case9 before case10."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def _add_row(slices, cell, line, id_re, known, table, path, source):
    image_id, table_class = cell["id"], cell["class"]
    if not image_id:
        raise IvdsegError(f"{path} line {line} has no id.")
    if table_class in table.ignore_classes:
        return
    if table_class not in known:
        raise IvdsegError(f"{path} line {line} (id {image_id!r}) has the class {table_class!r}, which no output class "
                          f"of source {source!r} names; map it in 'classes' or list it in 'ignore_classes' (a class "
                          "left out would read as background).")
    s = slices.get(image_id)
    if s is None:
        m = id_re.search(image_id)
        if not m:
            raise IvdsegError(f"{path} line {line}: the id {image_id!r} does not match the id pattern "
                              f"{table.id_pattern!r}; fix 'id_pattern' in the spec.")
        groups = {k: (v or "") for k, v in m.groupdict().items()}
        if not groups["slice"].isdigit():
            raise IvdsegError(f"{path} line {line}: the id {image_id!r} gives the slice {groups['slice']!r}, not a "
                              "number; fix 'id_pattern' in the spec.")
        s = slices[image_id] = _Slice(image_id, line, groups)
    if table_class in s.rles:
        raise IvdsegError(f"{path} line {line} repeats id {image_id!r} with class {table_class!r} (first on line "
                          f"{s.rles[table_class][0]}); keep one row per id and class.")
    s.rles[table_class] = (line, cell["rle"])


class _ImageFinder:
    """Finds the one image of an id; lists each folder once (a table has tens of thousands of ids)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._listings: dict[Path, list[str]] = {}

    def find(self, s: _Slice, template: str, table_path: Path) -> Path:
        full = self.root / template.format(id=s.image_id, **s.groups)
        if re.search(r"[*?[]", str(full.parent)):
            found = sorted(Path(p) for p in glob.glob(str(full)))
        else:
            if full.parent not in self._listings:
                try:
                    self._listings[full.parent] = sorted(n for n in os.listdir(full.parent) if not n.startswith("."))
                except OSError:
                    self._listings[full.parent] = []
            found = [full.parent / n for n in fnmatch.filter(self._listings[full.parent], full.name)]
        if not found:
            raise IvdsegError(f"No image for id {s.image_id!r} ({table_path} line {s.line}): nothing matches {full}; "
                              "fix 'root' or 'image_template' in the spec.")
        if len(found) > 1:
            raise IvdsegError(f"The id {s.image_id!r} ({table_path} line {s.line}) matches {len(found)} images "
                              f"({found[0].name}, {found[1].name}, ...); make 'image_template' match one.")
        return found[0]


def _read_image(path: Path, image_id: str) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # 16-bit PNGs stay 16-bit
    if image is None:
        raise IvdsegError(f"{path} (id {image_id!r}) is not an image OpenCV can read.")
    if image.ndim != 2:
        raise IvdsegError(f"{path} (id {image_id!r}) has {image.shape[2]} channels; an RLE source needs greyscale "
                          "images.")
    return image


def _spacing_from_name(path: Path, shape_hw: tuple, pattern: str | None) -> tuple[float, float]:
    """(row, col) pixel spacing in mm that the file name gives (NaN without); checks the size it gives."""
    if pattern is None:
        return float("nan"), float("nan")
    m = re.search(pattern, path.name)
    if not m:
        raise IvdsegError(f"The image name {path.name} does not match the name pattern {pattern!r}; fix "
                          "'name_pattern' in the spec, or set it to null.")
    g = m.groupdict()
    if g.get("width") is not None and (int(g["height"]), int(g["width"])) != tuple(shape_hw):
        raise IvdsegError(f"{path} is {shape_hw[1]}x{shape_hw[0]} pixels but its name says {g['width']}x"
                          f"{g['height']} (width x height); the file is damaged or misnamed.")
    if g.get("spacing_x") is None:
        return float("nan"), float("nan")
    try:
        return float(g["spacing_y"]), float(g["spacing_x"])
    except ValueError:
        raise IvdsegError(f"The image name {path.name} gives the pixel spacing {g['spacing_x']}x{g['spacing_y']}, "
                          "which is not a number; fix 'name_pattern' in the spec.") from None


def _slice_masks(s: _Slice, shape_hw, table: RleTable, classes: list[str], table_path: Path) -> np.ndarray:
    """(K, H, W) bool: one mask per output class (``classes``, without background) of one id."""
    masks = np.zeros((len(classes), *shape_hw), bool)
    for table_class, (line, rle) in s.rles.items():
        try:
            mask = decode_rle(rle, shape_hw, table.rle_order)
        except ValueError as exc:
            raise IvdsegError(f"{table_path} line {line} (id {s.image_id!r}, class {table_class!r}): the RLE {exc}."
                              ) from None
        for out in table.outputs_of(table_class):
            masks[classes.index(out)] |= mask
    return masks


def _label(masks: np.ndarray, classes: list[str], overlapping: bool, image_id: str, table_path: Path) -> np.ndarray:
    """(K, H, W) per-class masks -> (H, W) uint8: bits (overlapping) or class values (an overlap is an error)."""
    if overlapping:
        return bits_from_masks(np.moveaxis(masks, 0, -1))
    if (masks.sum(axis=0) > 1).any():
        a, b = next((a, b) for a, b in combinations(range(len(classes)), 2) if (masks[a] & masks[b]).any())
        raise IvdsegError(f"{table_path}: on id {image_id!r} the classes {classes[a]!r} and {classes[b]!r} overlap "
                          f"in {int((masks[a] & masks[b]).sum())} pixels; set \"overlapping\": true in the export spec "
                          "to keep both.")
    label = np.zeros(masks.shape[1:], np.uint8)
    for c in range(len(classes)):
        label[masks[c]] = c + 1
    return label


def iter_rle_cases(spec: SourceSpec, classes: list[str], overlapping: bool = False) -> Iterator[RawCase]:
    """The RawCases of an ``rle_csv`` source: one per case-day, slices sorted by slice number.

    The table is read and checked here, before the first case; images and RLEs are read case by case.

    Args:
        spec: a source of kind "rle_csv" (``spec.table`` holds its settings).
        classes: output class names without background.
        overlapping: labels hold one bit per class; else class values, and an overlap is an error.

    Returns:
        An iterator of RawCase: patient = the id's case, image (N, H, W) as stored (e.g. uint16), label (N, H, W)
        uint8, pixel spacing (row, col) in mm from the file names, slice plane "as stored".

    Raises:
        IvdsegError: see :func:`read_table`; an output class not in ``classes``.
    """
    table: RleTable = spec.table
    unknown = [c for c in table.class_map if c not in classes]
    if unknown:
        raise IvdsegError(f"Class {unknown[0]!r} of source {spec.name!r} is not among the output classes {classes}.")
    table_path = spec.root / table.csv
    series = read_table(table_path, table, spec.name)
    return _cases(spec, classes, overlapping, series, table_path)


def _cases(spec, classes, overlapping, series, table_path) -> Iterator[RawCase]:
    table: RleTable = spec.table
    finder = _ImageFinder(spec.root)
    for (case, day), slices in series.items():
        name = f"{case}_{day}" if day else case
        images, labels, first, spacing = [], [], None, None
        for s in slices:
            path = finder.find(s, table.image_template, table_path)
            image = _read_image(path, s.image_id)
            sp = _spacing_from_name(path, image.shape, table.name_pattern)
            if first is None:
                first, spacing = path, sp
            elif image.shape != images[0].shape or not np.allclose(sp, spacing, equal_nan=True):
                raise IvdsegError(f"The images of {name} differ in size or pixel spacing ({first.name} is "
                                  f"{images[0].shape[1]}x{images[0].shape[0]}, {path.name} is "
                                  f"{image.shape[1]}x{image.shape[0]}); one case-day must be one series.")
            masks = _slice_masks(s, image.shape, table, classes, table_path)
            images.append(image)
            labels.append(_label(masks, classes, overlapping, s.image_id, table_path))
        numbers = [s.number for s in slices]
        yield RawCase(patient=case, source=spec.name, image=np.stack(images), label=np.stack(labels),
                      pixel_spacing_mm=spacing, origin=f"{table_path} ({name})",
                      labelled_classes=tuple(table.class_map), slice_plane="as stored",
                      slice_order="slice number", missing_slices=numbers[-1] - numbers[0] + 1 - len(numbers))
