"""Per-disc measurements against hand-computed values on shapes of known size, and the table file."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from ivdseg.inference.levels import name_levels, split_instances
from ivdseg.inference.measure import disc_shape, measure_discs, write_table
from ivdseg.io.geometry import Volume, sagittal_mapping

PIXEL_MM = 0.25


def _polygon_mask(corners_mm, shape=(400, 400)):
    """A convex polygon (corners in order, as (x = anterior -> posterior, y = superior -> inferior) mm) on a pixel
    grid: the pixels whose centres (column x PIXEL_MM, row x PIXEL_MM) lie inside it."""
    rows, cols = np.indices(shape)
    x, y = cols * PIXEL_MM, rows * PIXEL_MM
    corners = np.array(corners_mm, float)
    sides = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        sides.append((b[0] - a[0]) * (y - a[1]) - (b[1] - a[1]) * (x - a[0]))
    sides = np.array(sides)
    return (sides > 0).all(axis=0) | (sides < 0).all(axis=0)


def _box(x0, y0, x1, y1):
    """An axis-aligned rectangle whose edges fall between pixel centres: exactly (x1 - x0) x (y1 - y0) mm of pixels."""
    h = PIXEL_MM / 2
    return _polygon_mask([(x0 + h, y0 + h), (x1 + h, y0 + h), (x1 + h, y1 + h), (x0 + h, y1 + h)], (400, 400))


def _rotated(corners, degrees, centre=(50.0, 50.0)):
    t = np.radians(degrees)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    return (np.array(corners) - centre) @ rot.T + centre


def test_a_tilted_rectangle_has_its_depth_and_heights():
    # 40 mm deep, 10 mm high, tilted 20 degrees (a lordotic lumbar disc)
    rect = _rotated([(30, 45), (70, 45), (70, 55), (30, 55)], 20)
    shape = disc_shape(_polygon_mask(rect), (PIXEL_MM, PIXEL_MM))
    assert shape["ap_depth_mm"] == pytest.approx(40, abs=0.5)
    for key in ("anterior_height_mm", "middle_height_mm", "posterior_height_mm"):
        assert shape[key] == pytest.approx(10, abs=0.4)
    assert shape["long_axis"][0] > 0  # points anterior -> posterior


def test_a_wedge_is_higher_in_front():
    # anterior edge 12 mm, posterior edge 8 mm, 36 mm deep, symmetric about its long axis, tilted 15 degrees:
    # heights at 1/6, 1/2 and 5/6 of the depth are 12 - 4/6, 10 and 8 + 4/6 mm
    wedge = _rotated([(32, 44), (68, 46), (68, 54), (32, 56)], 15)
    shape = disc_shape(_polygon_mask(wedge), (PIXEL_MM, PIXEL_MM))
    assert shape["ap_depth_mm"] == pytest.approx(36, abs=0.6)
    assert shape["anterior_height_mm"] == pytest.approx(12 - 4 / 6, abs=0.4)
    assert shape["middle_height_mm"] == pytest.approx(10, abs=0.4)
    assert shape["posterior_height_mm"] == pytest.approx(8 + 4 / 6, abs=0.4)


def _scene(with_vertebrae=True, with_canal=True):
    """Three sagittal slices (1 mm apart) of 100 x 100 mm at 0.25 mm: one disc 40 x 10 mm between two vertebral
    bodies 40 x 25 mm, a canal behind; intensities disc 300, vertebra 150, canal 600, background 0."""
    geometry = Volume(np.zeros((400, 400, 3), np.int16), np.diag([1.0, PIXEL_MM, PIXEL_MM, 1.0]))
    mapping = sagittal_mapping(geometry)
    n, h, w = mapping.stack_shape
    image, labels = np.zeros((n, h, w), np.float32), np.zeros((n, h, w), np.uint8)
    assert (h, w) == (400, 400)
    disc, above, below, canal = _box(30, 45, 70, 55), _box(30, 19, 70, 44), _box(30, 56, 70, 81), _box(75, 10, 85, 90)
    for k in range(n):
        image[k][disc], labels[k][disc] = 300, 1
        if with_vertebrae:
            image[k][above | below], labels[k][above | below] = 150, 2
        if with_canal:
            image[k][canal], labels[k][canal] = 600, 3
    to = mapping.to_volume
    return (Volume(to(image), geometry.ijk_to_ras), Volume(to(labels), geometry.ijk_to_ras))


CLASSES = [{"value": 1, "name": "intervertebral disc"}, {"value": 2, "name": "vertebra"},
           {"value": 3, "name": "spinal canal"}]


def test_measurements_of_a_disc_between_two_vertebrae():
    image, labelmap = _scene()
    labels, n = split_instances(labelmap.array == 1, image)
    levels = name_levels(labels, image)
    entropy = Volume(np.where(labelmap.array == 1, 0.3, 0.0).astype(np.float16), image.ijk_to_ras)
    (row,) = measure_discs(image, levels, labelmap, CLASSES, entropy, review_threshold=0.2)
    assert row.volume_ml == pytest.approx(40 * 10 * 3 / 1000, rel=0.03)
    assert row.ap_depth_mm == pytest.approx(40, abs=0.5) and row.middle_height_mm == pytest.approx(10, abs=0.4)
    assert row.disc_height_index == pytest.approx(10 / 25, abs=0.02)
    assert row.signal_reference == "spinal canal" and row.signal_ratio == pytest.approx(0.5)
    assert row.uncertainty == pytest.approx(0.3, abs=1e-3) and row.review
    assert row.name == "intervertebral disc 1" and row.level == ""  # no anchor: numbered, not named


def test_without_canal_the_signal_is_against_bone_and_without_bone_no_index():
    image, labelmap = _scene(with_canal=False)
    levels = name_levels(split_instances(labelmap.array == 1, image)[0], image)
    (row,) = measure_discs(image, levels, labelmap, CLASSES[:2])
    assert row.signal_reference == "vertebral body" and row.signal_ratio == pytest.approx(2.0)
    assert row.uncertainty is None and row.review is None
    image, labelmap = _scene(with_vertebrae=False, with_canal=False)
    levels = name_levels(split_instances(labelmap.array == 1, image)[0], image)
    (row,) = measure_discs(image, levels, labelmap, CLASSES[:1])
    assert row.disc_height_index is None and row.signal_ratio is None and row.signal_reference == ""


def test_the_table_has_units_in_its_header_and_one_row_per_disc(tmp_path):
    image, labelmap = _scene()
    levels = name_levels(split_instances(labelmap.array == 1, image)[0], image)
    rows = measure_discs(image, levels, labelmap, CLASSES)
    path = write_table(tmp_path / "discs.csv", rows)
    with open(path, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 1 and float(table[0]["ap_depth_mm"]) == pytest.approx(40, abs=0.5)
    assert {"volume_ml", "anterior_height_mm", "middle_height_mm", "posterior_height_mm", "ap_depth_mm",
            "disc_height_index", "signal_ratio", "uncertainty", "review"} <= set(table[0])
    assert table[0]["uncertainty"] == ""  # not measured: empty, not 0
    with pytest.raises(Exception, match="exists"):
        write_table(path, rows)
