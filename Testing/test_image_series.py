"""2D image series as inputs of `ivdseg segment`, and its RLE table output."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest
from conftest import require_data

from ivdseg import cli
from ivdseg.data.rle import decode_rle
from ivdseg.errors import IvdsegError
from ivdseg.io.images2d import is_image_series, read_image_series
from ivdseg.io.volumes import read_volume


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def test_uw_madison_names_give_order_ids_and_spacing(tmp_path):
    scans = tmp_path / "case7" / "case7_day3" / "scans"
    for number in (10, 2, 1):
        _write(scans / f"slice_{number:04d}_24_16_1.50_1.25.png", np.full((16, 24), number * 100, np.uint16))
    series = read_image_series(scans)
    assert series.ids == ["case7_day3_slice_0001", "case7_day3_slice_0002", "case7_day3_slice_0010"]
    assert series.volume.array.shape == (3, 16, 24) and series.volume.array.dtype == np.uint16
    assert series.volume.array[2, 0, 0] == 1000  # 16-bit values unchanged
    # rows are 1.25 mm apart, columns 1.50 mm: the spacing of the array's J and I axes
    assert np.allclose(sorted(series.volume.spacing_ijk_mm[:2]), [1.25, 1.5])
    assert is_image_series(scans) and is_image_series(series.files[0]) and not is_image_series(tmp_path / "none")


def test_bad_image_series_end_in_one_sentence(tmp_path):
    _write(tmp_path / "a" / "slice_0001_8_8_1.0_1.0.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "a" / "slice_0002_9_8_1.0_1.0.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(IvdsegError, match="share a size"):
        read_image_series(tmp_path / "a")
    _write(tmp_path / "b" / "slice_0001_9_9_1.0_1.0.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(IvdsegError, match="says 9x9 pixels"):
        read_image_series(tmp_path / "b")
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 2] = 255
    _write(tmp_path / "c" / "x.png", colour)
    with pytest.raises(IvdsegError, match="colour image"):
        read_image_series(tmp_path / "c")
    (tmp_path / "d").mkdir()
    with pytest.raises(IvdsegError, match="no PNG or JPG"):
        read_image_series(tmp_path / "d")


def test_segment_png_slices_writes_the_rle_table_of_its_labelmap(tmp_path, capsys):
    spider = require_data("spider_t2_2d")
    folder = tmp_path / "slices"
    folder.mkdir()
    for name in ("107_t2_SPACE_slice59.png", "107_t2_SPACE_slice60.png"):
        (folder / name).write_bytes((spider / "images" / name).read_bytes())
    out, table = tmp_path / "discs.nii.gz", tmp_path / "discs.csv"
    assert cli.main([str(a) for a in ["segment", folder, "-o", out, "--rle-csv", table, "--no-tta",
                                      "--progress", "none"]]) == 0
    labels = np.rint(read_volume(out).array).astype(np.uint8)
    with open(table, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "class", "segmentation"]
    assert [r[0] for r in rows[1:]] == ["107_t2_SPACE_slice59", "107_t2_SPACE_slice60"]
    for k, (_, name, rle) in enumerate(rows[1:]):
        assert name == "intervertebral disc"
        assert np.array_equal(decode_rle(rle, labels.shape[1:]), labels[k] == 1)
    assert (labels == 1).sum() > 500  # the bundled disc model finds discs on real sagittal slices
    # the table is refused when it exists, as every output
    capsys.readouterr()
    assert cli.main([str(a) for a in ["segment", folder, "-o", tmp_path / "other.nii.gz", "--rle-csv", table]]) != 0
    assert "already exists" in capsys.readouterr().err
    assert not (tmp_path / "other.nii.gz").exists()


def test_a_dicom_folder_with_a_thumbnail_stays_dicom(tmp_path):
    from dicom_builders import _series

    _series(tmp_path / "series")
    _write(tmp_path / "series" / "thumbnail.png", np.zeros((8, 8), np.uint8))
    assert not is_image_series(tmp_path / "series")
