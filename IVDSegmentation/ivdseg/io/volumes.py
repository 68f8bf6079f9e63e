"""Volume files: NIfTI, NRRD and DICOM in, NIfTI and NRRD out, each as a :class:`~ivdseg.io.geometry.Volume`.

All readers convert their file's convention to the Volume's (array (K, J, I), IJK-to-RAS):

* NIfTI (nibabel): the affine is already voxel -> RAS with nibabel's array in (i, j, k) order.
* NRRD (pynrrd, ``index_order='F'``, i.e. (i, j, k) order): ``space directions`` rows are the i, j, k axes in the
  file's ``space``; LPS and LAS are turned into RAS by flipping the signs of the first rows.
* DICOM: see :mod:`ivdseg.io.dicom`.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_write, file_suffix
from ivdseg.io.dicom import read_series
from ivdseg.io.geometry import Volume, is_degenerate

# Sign that turns each NRRD space's (x, y, z) into RAS.
_NRRD_SPACE_TO_RAS = {
    "right-anterior-superior": (1.0, 1.0, 1.0), "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0), "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0), "lps": (-1.0, -1.0, 1.0),
}
_LPS_SIGNS = np.array([-1.0, -1.0, 1.0])


def _to_3d(data_ijk: np.ndarray, path: Path) -> np.ndarray:
    """Drops trailing singleton axes (a 4D NIfTI with one time point) and adds k for a 2D image."""
    while data_ijk.ndim > 3 and data_ijk.shape[-1] == 1:
        data_ijk = data_ijk[..., 0]
    if data_ijk.ndim == 2:
        data_ijk = data_ijk[:, :, np.newaxis]
    if data_ijk.ndim != 3:
        raise IvdsegError(f"{path} has {data_ijk.ndim} dimensions {data_ijk.shape}; a 3D scalar volume is needed.")
    return data_ijk


def _read_nifti(path: Path) -> Volume:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        if len(image.shape) > 3 and any(n != 1 for n in image.shape[3:]):
            raise IvdsegError(f"{path} has {len(image.shape)} dimensions {image.shape}; "
                              "a 3D scalar volume is needed.")
        data = np.asanyarray(image.dataobj)  # applies scl_slope/scl_inter when the header sets them
        affine = np.array(image.affine, dtype=np.float64)
    except (OSError, ValueError, EOFError, zlib.error, nib.filebasedimages.ImageFileError,
            nib.spatialimages.HeaderDataError) as exc:
        raise IvdsegError(f"{path} could not be read as NIfTI ({exc}); check that the file is complete.") from exc
    data = _to_3d(np.asarray(data), path)
    return Volume(array=np.ascontiguousarray(data.transpose(2, 1, 0)), ijk_to_ras=affine)


def _read_nrrd(path: Path) -> Volume:
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="F")  # data[i, j, k]
    except (OSError, ValueError, EOFError, zlib.error, nrrd.NRRDError) as exc:
        raise IvdsegError(f"{path} could not be read as NRRD ({exc}); check that the file is complete.") from exc
    kinds = [str(k).lower() for k in header.get("kinds", [])]
    if data.ndim > 3:
        raise IvdsegError(f"{path} has {data.ndim} dimensions {data.shape}; a 3D scalar volume is needed.")
    vector_kinds = [k for k in kinds if k in ("rgb-color", "rgba-color", "vector", "list", "3-color", "4-color")]
    if vector_kinds:
        raise IvdsegError(f"{path} is a {vector_kinds[0]} image with {data.ndim} dimensions; "
                          "a 3D scalar volume is needed.")
    space = str(header.get("space", "left-posterior-superior")).lower()  # no space: ITK and Slicer assume LPS
    if space not in _NRRD_SPACE_TO_RAS:
        raise IvdsegError(f"{path} uses the NRRD space {space!r}; only RAS, LAS and LPS spaces are supported, "
                          "so re-save it from Slicer.")
    signs = np.array(_NRRD_SPACE_TO_RAS[space])
    if "space directions" in header:
        rows = np.array(header["space directions"], dtype=np.float64)
        directions = rows[~np.isnan(rows).any(axis=1)].T  # columns = axes
    else:
        directions = np.diag(np.asarray(header.get("spacings", np.ones(data.ndim)), dtype=np.float64))
    origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
    if directions.shape != (3, data.ndim) or origin.shape != (3,):
        raise IvdsegError(f"{path} has space directions for {directions.shape[1]} axes in a {directions.shape[0]}D "
                          f"space but {data.ndim} data axes; a 3D scalar volume is needed.")
    if data.ndim == 2:
        normal = np.cross(directions[:, 0], directions[:, 1])
        directions = np.column_stack([directions, normal / (np.linalg.norm(normal) or 1.0)])
    data = _to_3d(data, path)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = directions * signs[:, np.newaxis]
    ijk_to_ras[:3, 3] = origin * signs
    return Volume(array=np.ascontiguousarray(data.transpose(2, 1, 0)), ijk_to_ras=ijk_to_ras)


def read_volume(path, *, series_uid: str | None = None) -> Volume:
    """Reads a 3D scalar volume with its geometry.

    Args:
        path: a ``.nii``, ``.nii.gz``, ``.nrrd`` or ``.nhdr`` file, a ``.dcm`` file, or a folder of DICOM files.
        series_uid: for DICOM, the SeriesInstanceUID to read when the folder holds several series.

    Returns:
        The :class:`Volume`, array shape (K, J, I); a 2D image gives K = 1.

    Raises:
        IvdsegError: the path is missing, has an unknown extension, cannot be decoded, is not a 3D scalar image,
            or its IJK-to-RAS matrix is degenerate (non-finite, a zero-length axis, parallel axes).
    """
    path = Path(path)
    if not path.exists():
        raise IvdsegError(f"{path} does not exist; check the path.")
    suffix = file_suffix(path)
    if path.is_dir() or suffix == ".dcm":
        volume = read_series(path if path.is_dir() else [path], series_uid=series_uid)
    elif suffix in (".nii", ".nii.gz"):
        volume = _read_nifti(path)
    elif suffix in (".nrrd", ".nhdr"):
        volume = _read_nrrd(path)
    else:
        raise IvdsegError(f"{path} has an unknown extension; use .nii, .nii.gz, .nrrd, .nhdr or a DICOM folder.")
    # Checked here, where the file can still be named: a flat grid would fail later in slicing as a bare ValueError.
    if is_degenerate(volume.ijk_to_ras):
        raise IvdsegError(f"{path} has a degenerate voxel-to-world matrix (a zero-length or repeated axis in its "
                          "affine, space directions or pixel spacing); fix its geometry header, e.g. re-save it "
                          "from Slicer.")
    return volume


def _writable_array(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def _save_nifti(volume: Volume, target: Path) -> None:
    import nibabel as nib

    data = _writable_array(volume.array).transpose(2, 1, 0)
    image = nib.Nifti1Image(data, volume.ijk_to_ras, dtype=data.dtype)
    image.set_qform(volume.ijk_to_ras, code=1)
    image.set_sform(volume.ijk_to_ras, code=1)
    image.header.set_xyzt_units("mm")
    nib.save(image, str(target))


def _save_nrrd(volume: Volume, target: Path) -> None:
    import nrrd

    header = {
        "space": "left-posterior-superior",
        "space directions": (volume.ijk_to_ras[:3, :3] * _LPS_SIGNS[:, np.newaxis]).T,  # one row per i, j, k
        "space origin": volume.ijk_to_ras[:3, 3] * _LPS_SIGNS,
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    data = np.ascontiguousarray(_writable_array(volume.array)).transpose(2, 1, 0)
    nrrd.write(str(target), data, header, index_order="F")


def write_volume(volume: Volume, path, overwrite: bool = False) -> Path:
    """Writes a volume atomically: into a temporary file beside the target, then renamed onto it.

    NIfTI gets the matrix in both qform and sform (code 1, scanner); NRRD gets ``left-posterior-superior`` space
    directions and origin, gzip-compressed. The dtype is kept (bool is written as uint8, float16 as float32).

    Args:
        volume: the volume to write, array (K, J, I).
        path: target ``.nii``, ``.nii.gz`` or ``.nrrd`` file.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        IvdsegError: unknown extension, target exists and not ``overwrite``, folder missing or not writable,
            or the write failed (no temporary file is left behind).
    """
    path = Path(path)
    suffix = file_suffix(path)
    savers = {".nii": _save_nifti, ".nii.gz": _save_nifti, ".nrrd": _save_nrrd}
    if suffix not in savers:
        raise IvdsegError(f"{path} has an unknown extension for writing; use .nii, .nii.gz or .nrrd.")
    return atomic_write(path, lambda temp: savers[suffix](volume, temp), overwrite)
