"""Tests of ivdseg.io.dicom: folder indexing and series reading, on synthetic series built here and on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import require_data
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from ivdseg.io.dicom import read_series
from ivdseg.io.dicom_index import index_folder, orientation_name
from ivdseg.errors import IvdsegError, IvdsegWarning
from ivdseg.io.volumes import read_volume
from ivdseg.io.geometry import sagittal_slices

from dicom_builders import (  # noqa: E402
    ENHANCED_MR_STORAGE,
    BASIC_TEXT_SR_STORAGE,
    LPS_TO_RAS,
    _dataset,
    _image,
    _pixels,
    SAGITTAL_IOP,
    OBLIQUE_IOP,
    _series,
)


@pytest.mark.parametrize("iop", [SAGITTAL_IOP, OBLIQUE_IOP], ids=["sagittal", "oblique"])
def test_synthetic_series_geometry_and_order(tmp_path, iop):
    # Names shuffled and InstanceNumber reversed: only the positions may decide the order.
    normal = _series(tmp_path / "s", iop=iop, names=["c.dcm", "e.dcm", "a.dcm", "d.dcm", "b.dcm"])
    volume = read_series(tmp_path / "s")
    assert volume.array.shape == (5, 4, 6)
    assert volume.array.dtype == np.uint16
    for k in range(5):
        np.testing.assert_array_equal(volume.array[k], _pixels(k))
    expected = np.eye(4)
    expected[:3, 0] = np.array(iop[:3]) * 0.75 * LPS_TO_RAS
    expected[:3, 1] = np.array(iop[3:]) * 0.5 * LPS_TO_RAS
    expected[:3, 2] = normal * 3.0 * LPS_TO_RAS
    expected[:3, 3] = np.array([10.0, -20.0, 30.0]) * LPS_TO_RAS
    np.testing.assert_allclose(volume.ijk_to_ras, expected, atol=1e-9)
    info, = index_folder(tmp_path)
    assert (info.n_files, info.n_slices, info.rows, info.columns) == (5, 5, 4, 6)
    assert [p.name for p in info.files] == ["c.dcm", "e.dcm", "a.dcm", "d.dcm", "b.dcm"]
    assert info.orientation == ("sagittal" if iop == SAGITTAL_IOP else "oblique")
    assert info.patient_id == "test-patient" and "test-patient" not in repr(info)


def test_reverse_positions_sort_along_normal(tmp_path):
    normal = _series(tmp_path, spacing=-2.0)  # slice 0 is last along the normal
    volume = read_series(tmp_path)
    np.testing.assert_array_equal(volume.array[0], _pixels(4))
    np.testing.assert_allclose(volume.ijk_to_ras[:3, 2], normal * 2.0 * LPS_TO_RAS, atol=1e-9)
    np.testing.assert_allclose(volume.origin_ras, (np.array([10.0, -20.0, 30.0]) - 8.0 * normal) * LPS_TO_RAS)


def test_small_jitter_is_accepted_and_missing_slice_refused(tmp_path):
    _series(tmp_path / "jitter", jitter=[0.0, 0.02, -0.01, 0.015, 0.0])
    assert read_series(tmp_path / "jitter").spacing_ijk_mm[2] == pytest.approx(3.0, rel=0.01)
    _series(tmp_path / "gap", skip=(2,))
    with pytest.raises(IvdsegError, match="missing") as error:
        read_series(tmp_path / "gap")
    assert str(tmp_path / "gap") in str(error.value)


def test_rescale_slope_gives_float32(tmp_path):
    _series(tmp_path, RescaleSlope=0.5, RescaleIntercept=-1.0)
    volume = read_series(tmp_path)
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array[1], _pixels(1) * 0.5 - 1.0)


def test_integral_rescale_stays_integer(tmp_path):
    _series(tmp_path, RescaleSlope=1, RescaleIntercept=-1024)
    volume = read_series(tmp_path)
    assert np.issubdtype(volume.array.dtype, np.signedinteger)
    assert volume.array[0, 0, 0] == -1024


def test_single_slice_uses_spacing_between_slices(tmp_path):
    _image(tmp_path / "one.dcm", _pixels(0), SAGITTAL_IOP, (1.0, 2.0, 3.0), SpacingBetweenSlices=4.5)
    volume = read_volume(tmp_path / "one.dcm")
    assert volume.array.shape == (1, 4, 6)
    assert volume.spacing_ijk_mm[2] == pytest.approx(4.5)


def test_several_series_need_a_uid(tmp_path):
    _series(tmp_path / "a", series_uid="1.2.3.4")
    _series(tmp_path / "b", series_uid="1.2.3.5", iop=OBLIQUE_IOP)
    with pytest.raises(IvdsegError, match="--series") as error:
        read_series(tmp_path)
    assert "1.2.3.4" in str(error.value) and "1.2.3.5" in str(error.value)
    assert read_series(tmp_path, series_uid="1.2.3.5").array.shape == (5, 4, 6)
    with pytest.raises(IvdsegError, match="no image series with UID"):
        read_series(tmp_path, series_uid="9.9")


def test_truncated_file_is_named(tmp_path):
    _series(tmp_path)
    victim = tmp_path / "slice3.dcm"
    victim.write_bytes(victim.read_bytes()[:-20])  # pixel data cut short: the header says it is of this series
    with pytest.raises(IvdsegError, match="slice3.dcm could not be decoded"):
        read_series(tmp_path)
    victim.write_bytes(victim.read_bytes()[:200])  # header cut short: its series cannot be told, so it is skipped
    with pytest.warns(IvdsegWarning, match=r"skipped 1 damaged DICOM file\(s\).*slice3.dcm"):
        with pytest.raises(IvdsegError, match=r"a slice is missing \(skipped as damaged: slice3.dcm\)"):
            read_series(tmp_path)


def cut_after_series_uid(path: Path) -> Path:
    """Truncates a file just after its SeriesInstanceUID: the partial header names the series, the image tags
    (Rows, Columns, pixels) are gone."""
    data = path.read_bytes()
    uid = str(pydicom.dcmread(path).SeriesInstanceUID).encode()
    end = data.index(uid) + len(uid) + len(uid) % 2  # UIDs are padded to an even length
    path.write_bytes(data[:end + 3])  # into the next element's tag
    return path


def test_damaged_files_outside_the_chosen_series_are_skipped_with_a_warning(tmp_path):
    _series(tmp_path / "a", series_uid="1.2.3.4")
    _series(tmp_path / "b", series_uid="1.2.3.5", iop=OBLIQUE_IOP)
    cut_after_series_uid(tmp_path / "b" / "slice1.dcm")  # known to be of series b
    (tmp_path / "b" / "slice2.dcm").write_bytes((tmp_path / "b" / "slice2.dcm").read_bytes()[:200])  # unknown
    with pytest.warns(IvdsegWarning, match=r"skipped 2 damaged DICOM file\(s\).*slice1.dcm.*slice2.dcm"):
        volume = read_series(tmp_path, series_uid="1.2.3.4")
    assert volume.array.shape == (5, 4, 6)
    np.testing.assert_array_equal(volume.array[2], _pixels(2))
    with pytest.warns(IvdsegWarning, match="skipped 2 damaged"):
        series = index_folder(tmp_path)
    assert [(s.series_uid, s.n_files) for s in series] == [("1.2.3.4", 5), ("1.2.3.5", 3)]


def test_damaged_file_of_the_chosen_series_is_refused(tmp_path):
    _series(tmp_path / "a", series_uid="1.2.3.4")
    _series(tmp_path / "b", series_uid="1.2.3.5", iop=OBLIQUE_IOP)
    victim = cut_after_series_uid(tmp_path / "a" / "slice0.dcm")  # an end slice: no gap would reveal it
    with pytest.raises(IvdsegError, match=r"a/slice0.dcm is a damaged DICOM file of the chosen series"):
        read_series(tmp_path, series_uid="1.2.3.4")
    with pytest.warns(IvdsegWarning, match="slice0.dcm"):
        assert read_series(tmp_path, series_uid="1.2.3.5").array.shape == (5, 4, 6)
    (tmp_path / "b" / "slice0.dcm").unlink()
    for n in range(1, 5):
        (tmp_path / "b" / f"slice{n}.dcm").unlink()
    with pytest.raises(IvdsegError, match="slice0.dcm is a damaged DICOM file of the chosen series"):
        read_series(tmp_path)  # the only series, chosen without --series
    for n in range(1, 5):
        (tmp_path / "a" / f"slice{n}.dcm").unlink()
    with pytest.raises(IvdsegError, match=r"holds 1 damaged DICOM file\(s\) \(e.g. slice0.dcm"):
        read_series(tmp_path)
    assert victim.exists()


def test_report_without_pixels_is_not_an_image_series(tmp_path):
    report = _dataset(sop_class=BASIC_TEXT_SR_STORAGE, Modality="SR")
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    assert index_folder(tmp_path) == []
    with pytest.raises(IvdsegError, match="no image series"):
        read_series(tmp_path)


def test_colour_image_is_refused(tmp_path):
    ds = _dataset(ImageOrientationPatient=list(SAGITTAL_IOP), ImagePositionPatient=[0, 0, 0], PixelSpacing=[1, 1])
    ds.Rows, ds.Columns = 4, 6
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.zeros((4, 6, 3), np.uint8).tobytes()
    ds.save_as(tmp_path / "rgb.dcm", enforce_file_format=True)
    with pytest.raises(IvdsegError, match="colour image"):
        read_series(tmp_path)


def test_empty_and_non_dicom_folders_are_refused(tmp_path):
    with pytest.raises(IvdsegError, match="no DICOM"):
        read_series(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "DICOMDIR").write_bytes(b"\0" * 300)
    assert index_folder(tmp_path) == []
    with pytest.raises(IvdsegError, match="no DICOM"):
        read_series(tmp_path)
    with pytest.raises(IvdsegError, match="does not exist"):
        read_series(tmp_path / "nowhere")


def test_different_sizes_in_one_series_are_refused(tmp_path):
    _series(tmp_path)
    _image(tmp_path / "slice5.dcm", np.zeros((5, 6)), SAGITTAL_IOP, (10.0 - 15.0, -20.0, 30.0))
    with pytest.raises(IvdsegError, match="image sizes"):
        read_series(tmp_path)


def _enhanced(path: Path, order=(2, 0, 1)) -> None:
    """A 3-frame enhanced MR file with shared orientation/spacing and per-frame positions (given out of order)."""
    ds = _dataset(sop_class=ENHANCED_MR_STORAGE, NumberOfFrames=3, Rows=4, Columns=6)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shared = Dataset()
    shared.PlaneOrientationSequence = Sequence([Dataset()])
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = list(SAGITTAL_IOP)
    shared.PixelMeasuresSequence = Sequence([Dataset()])
    shared.PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.75]
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for n in order:
        frame = Dataset()
        frame.PlanePositionSequence = Sequence([Dataset()])
        frame.PlanePositionSequence[0].ImagePositionPatient = [10.0 - 2.0 * n, -20.0, 30.0]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([_pixels(n) for n in order]).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_simple_enhanced_multiframe(tmp_path):
    _enhanced(tmp_path / "multi.dcm")
    volume = read_series(tmp_path)
    assert volume.array.shape == (3, 4, 6)
    for k in range(3):
        np.testing.assert_array_equal(volume.array[k], _pixels(k))
    np.testing.assert_allclose(volume.ijk_to_ras[:3, 2], [2.0, 0.0, 0.0], atol=1e-9)  # towards patient right
    np.testing.assert_allclose(volume.origin_ras, [-10.0, 20.0, 30.0])
    info, = index_folder(tmp_path)
    assert (info.n_files, info.n_slices, info.orientation) == (1, 3, "sagittal")


def test_orientation_names():
    assert orientation_name([1, 0, 0, 0, 1, 0]) == "axial"
    assert orientation_name([1, 0, 0, 0, 0, -1]) == "coronal"
    assert orientation_name(list(SAGITTAL_IOP)) == "sagittal"
    assert orientation_name([1, 0, 0, 0, np.cos(0.7), np.sin(0.7)]) == "oblique"
    assert orientation_name(None) == "unknown"


def test_real_sagittal_series_matches_its_tags():
    folder = require_data("dicom_mr_sagittal_series/In")
    sidecar = json.loads(next(folder.parent.glob("Ref_dcm2niix_*.json")).read_text())
    info, = index_folder(folder)
    assert (info.n_files, info.n_slices, info.orientation) == (35, 35, "sagittal")
    assert info.description == sidecar["SeriesDescription"]
    assert np.all(np.diff(info.positions_mm) > 0)
    volume = read_series(folder)
    assert volume.array.shape == (35, 256, 256) and volume.array.dtype == np.uint16
    # The reference slice is found without ivdseg's sorting: IOP (0,1,0 / 0,0,-1) has the normal (-1, 0, 0), so
    # slices run from the largest LPS x (patient left) to the smallest, 4.8 mm apart (sidecar).
    headers = {f: pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.rglob("*.dcm"))}
    first_file = max(headers, key=lambda f: float(headers[f].ImagePositionPatient[0]))
    first = pydicom.dcmread(first_file)
    np.testing.assert_array_equal(volume.array[0], first.pixel_array)
    iop = np.array(sidecar["ImageOrientationPatientDICOM"], float)
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    np.testing.assert_allclose(volume.ijk_to_ras[:3, 0], iop[:3] * col_mm * LPS_TO_RAS, atol=1e-6)
    np.testing.assert_allclose(volume.ijk_to_ras[:3, 1], iop[3:] * row_mm * LPS_TO_RAS, atol=1e-6)
    np.testing.assert_allclose(volume.ijk_to_ras[:3, 2], [sidecar["SpacingBetweenSlices"], 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(volume.origin_ras, np.array(first.ImagePositionPatient, float) * LPS_TO_RAS)
    assert volume.origin_ras[0] == pytest.approx(-81.6, abs=0.05)  # PROVENANCE.md: x from -81.6 to +81.6 mm
    stack, mapping = sagittal_slices(volume)
    assert stack.shape == (35, 256, 256)
    assert mapping.slice_spacing_mm == pytest.approx(4.8, rel=1e-5)
    assert mapping.obliquity_deg == pytest.approx(0.0, abs=1e-6)


def test_real_misc_folder_has_several_series():
    root = require_data("dicom_mr_misc")
    series = index_folder(root)
    assert len(series) >= 10
    assert {"MR", "CT", "CR"} <= {s.modality for s in series}
    with pytest.raises(IvdsegError, match="--series"):
        read_series(root / "pydicom_test_files" / "dicomdirtests")
    ct = next(s for s in series if s.description.startswith("SmartScore"))
    assert read_series(root, series_uid=ct.series_uid).array.shape == (5, 16, 16)


@pytest.mark.parametrize("name, shape", [("MR-SIEMENS-DICOM-WithOverlays.dcm", (1, 484, 484)),
                                         ("MR2_UNCI.dcm", (1, 1024, 1024))])
def test_real_single_files(name, shape):
    path = require_data(f"dicom_mr_misc/pydicom-data/{name}")
    assert read_volume(path).array.shape == shape


def test_real_multiframe_without_plane_positions_is_refused():
    path = require_data("dicom_mr_misc/pydicom-data/emri_small.dcm")
    with pytest.raises(IvdsegError, match="multi-frame"):
        read_series([path])
