"""Builders of synthetic DICOM for tests: pydicom writes small, exactly known series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
BASIC_TEXT_SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.11"
LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])




def _dataset(sop_class=MR_IMAGE_STORAGE, series_uid="1.2.3.4", **tags) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID = "test-patient"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = "synthetic"
    ds.SeriesNumber = 1
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def _image(path: Path, pixels: np.ndarray, iop, ipp, pixel_spacing=(0.5, 0.75), **tags) -> Path:
    """Writes one single-frame uint16 MR slice; ``pixels`` has shape (Rows, Columns)."""
    ds = _dataset(ImageOrientationPatient=list(iop), ImagePositionPatient=list(ipp),
                  PixelSpacing=list(pixel_spacing), SliceThickness=3.0, **tags)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _pixels(n: int, rows=4, columns=6) -> np.ndarray:
    return (np.arange(rows * columns).reshape(rows, columns) + 100 * n).astype(np.uint16)


SAGITTAL_IOP = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
OBLIQUE_IOP = (np.cos(0.6), np.sin(0.6), 0.0, 0.0, 0.0, -1.0)  # normal 34 degrees from -y


def _series(folder: Path, iop=SAGITTAL_IOP, spacing=3.0, skip=(), jitter=(), names=None, **tags) -> np.ndarray:
    """Writes 5 slices n = 0..4 at IPP = (10, -20, 30) + n * spacing * normal; returns the normal (LPS)."""
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(iop[:3], iop[3:])
    names = names or [f"slice{n}.dcm" for n in range(5)]
    for n in range(5):
        if n in skip:
            continue
        offset = n * spacing + (jitter[n] if jitter else 0.0)
        ipp = np.array([10.0, -20.0, 30.0]) + offset * normal
        _image(folder / names[n], _pixels(n), iop, ipp, InstanceNumber=5 - n, **tags)
    return normal
