"""DICOM SEG output of `ivdseg segment -o OUT.dcm` on a real DICOM series: read back with highdicom and pydicom
onto the source geometry, with its references, codes and algorithm; and the refusals."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from conftest import require_data

from ivdseg import cli
from ivdseg.io.dicom import read_series
from ivdseg.io.dicomseg import write_dicom_seg
from ivdseg.io.geometry import Volume

hd = pytest.importorskip("highdicom")

CLASSES = [{"value": 1, "name": "L4-L5 intervertebral disc", "color": [0.3, 0.8, 0.6],
            "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                            "type": ["SCT", "360499006", "Intervertebral disc"]}},
           {"value": 2, "name": "L5-S1 intervertebral disc", "color": [0.9, 0.6, 0.2],
            "terminology": {"category": ["SCT", "123037004", "Anatomical Structure"],
                            "type": ["SCT", "360499006", "Intervertebral disc"]}}]


@pytest.fixture(scope="module")
def series():
    folder = require_data("dicom_mr_sagittal_series/In")
    return folder, read_series(folder)


def test_a_seg_references_its_series_and_reads_back_onto_its_grid(series, tmp_path):
    folder, volume = series
    labels = np.zeros(volume.array.shape, np.uint8)
    k, j, i = labels.shape
    labels[k // 2 - 2:k // 2 + 2, j // 3:j // 3 + 10, i // 3:i // 3 + 20] = 1  # a block on four slices
    labels[k // 2, 2 * j // 3:2 * j // 3 + 8, i // 2:i // 2 + 12] = 2  # another on one slice
    path = write_dicom_seg(Volume(labels, volume.ijk_to_ras), CLASSES, folder, tmp_path / "seg.dcm",
                           "ivd-disc-2d", "2.0.0")
    seg = hd.seg.segread(path)
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in folder.rglob("*")
               if p.is_file() and p.suffix != ".json"}
    source_series = pydicom.dcmread(next(iter(sources.values())), stop_before_pixels=True).SeriesInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source_series
    assert seg.SegmentSequence[0].SegmentLabel == "L4-L5 intervertebral disc"
    for item in seg.SegmentSequence:
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == "ivd-disc-2d"
        assert item.SegmentedPropertyTypeCodeSequence[0].CodeValue == "360499006"
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "123037004"
    # Each frame lands on the source slice it references, with the voxels of that slice.
    order = {ds_uid: n for n, ds_uid in enumerate(_sorted_uids(folder))}
    frames = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    seen = np.zeros_like(labels)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        seen[order[uid]][frames[f] > 0] = number
    np.testing.assert_array_equal(seen, labels)
    assert seg.SeriesInstanceUID != source_series and seg.PatientID == pydicom.dcmread(
        next(iter(sources.values())), stop_before_pixels=True).PatientID


def _sorted_uids(folder):
    from ivdseg.io.dicomseg import _sorted_source_datasets

    return [ds.SOPInstanceUID for ds in _sorted_source_datasets(folder, None)]


def test_an_empty_result_or_a_foreign_grid_writes_nothing(series, tmp_path):
    from ivdseg.errors import IvdsegError

    folder, volume = series
    with pytest.raises(IvdsegError, match="is empty"):
        write_dicom_seg(Volume(np.zeros(volume.array.shape, np.uint8), volume.ijk_to_ras), CLASSES, folder,
                        tmp_path / "seg.dcm", "m", "1")
    with pytest.raises(IvdsegError, match="voxels but the series has"):
        write_dicom_seg(Volume(np.ones((2, 3, 4), np.uint8), np.eye(4)), CLASSES, folder, tmp_path / "seg.dcm", "m", "1")
    assert not (tmp_path / "seg.dcm").exists()


def test_segment_writes_a_dicom_seg_from_dicom_and_refuses_one_from_nifti(series, tmp_path, capsys):
    folder, _ = series
    pytest.importorskip("onnxruntime")
    assert cli.main([str(a) for a in ["segment", folder, "-o", tmp_path / "discs.dcm", "--backend", "onnx",
                                      "--progress", "none"]]) == 0
    seg = hd.seg.segread(tmp_path / "discs.dcm")
    assert seg.Modality == "SEG" and seg.SegmentSequence[0].SegmentAlgorithmName == "ivd-disc-2d"
    nifti = require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz")
    capsys.readouterr()
    assert cli.main([str(a) for a in ["segment", nifti, "-o", tmp_path / "x.dcm", "--progress", "none"]]) == 2
    err = capsys.readouterr().err
    assert "a DICOM SEG references its source series" in err and err.count("\n") == 1
    assert not (tmp_path / "x.dcm").exists()
