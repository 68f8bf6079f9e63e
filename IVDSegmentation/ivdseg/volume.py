"""3D medical volumes with their geometry: NIfTI, NRRD and DICOM in, NIfTI and NRRD out, sagittal slicing.

A :class:`Volume` holds its voxels in Slicer's order, ``array[k, j, i]`` (slowest axis = k, as
``slicer.util.arrayFromVolume`` gives them), and the 4x4 matrix that maps a voxel index ``(i, j, k, 1)`` to RAS
millimetres (Slicer's IJKToRAS). All readers convert their file's convention to this one:

* NIfTI (nibabel): the affine is already voxel -> RAS with nibabel's array in (i, j, k) order.
* NRRD (pynrrd, ``index_order='F'``, i.e. (i, j, k) order): ``space directions`` rows are the i, j, k axes in the
  file's ``space``; LPS and LAS are turned into RAS by flipping the signs of the first rows.
* DICOM: see :mod:`ivdseg.dicom`.
"""

from __future__ import annotations

import itertools
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import IvdsegError

# Sign that turns each NRRD space's (x, y, z) into RAS.
_NRRD_SPACE_TO_RAS = {
    "right-anterior-superior": (1.0, 1.0, 1.0), "ras": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0), "las": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0), "lps": (-1.0, -1.0, 1.0),
}
_LPS_SIGNS = np.array([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """Voxels and geometry of one 3D scalar image.

    Attributes:
        array: voxels, shape (K, J, I): slowest axis k, fastest axis i (Slicer's ``arrayFromVolume`` order).
        ijk_to_ras: (4, 4) float64, maps (i, j, k, 1) to RAS millimetres.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray

    def __post_init__(self):
        self.array = np.asarray(self.array)
        self.ijk_to_ras = np.array(self.ijk_to_ras, dtype=np.float64)
        if self.array.ndim != 3:
            raise ValueError(f"Volume.array must have shape (K, J, I); got {self.array.shape}.")
        if self.ijk_to_ras.shape != (4, 4):
            raise ValueError(f"Volume.ijk_to_ras must be 4x4; got {self.ijk_to_ras.shape}.")

    @property
    def spacing_ijk_mm(self) -> np.ndarray:
        """(3,) voxel size along i, j, k in mm."""
        return np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0)

    @property
    def direction_ijk_to_ras(self) -> np.ndarray:
        """(3, 3) unit RAS directions of the i, j, k axes, one per column."""
        return self.ijk_to_ras[:3, :3] / self.spacing_ijk_mm

    @property
    def origin_ras(self) -> np.ndarray:
        """(3,) RAS position in mm of voxel (0, 0, 0)."""
        return self.ijk_to_ras[:3, 3].copy()


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


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
        IvdsegError: the path is missing, has an unknown extension, cannot be decoded, or is not a 3D scalar image.
    """
    path = Path(path)
    if not path.exists():
        raise IvdsegError(f"{path} does not exist; check the path.")
    if path.is_dir() or _suffix(path) == ".dcm":
        from .dicom import read_series

        return read_series(path if path.is_dir() else [path], series_uid=series_uid)
    suffix = _suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return _read_nifti(path)
    if suffix in (".nrrd", ".nhdr"):
        return _read_nrrd(path)
    raise IvdsegError(f"{path} has an unknown extension; use .nii, .nii.gz, .nrrd, .nhdr or a DICOM folder.")


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
    suffix = _suffix(path)
    savers = {".nii": _save_nifti, ".nii.gz": _save_nifti, ".nrrd": _save_nrrd}
    if suffix not in savers:
        raise IvdsegError(f"{path} has an unknown extension for writing; use .nii, .nii.gz or .nrrd.")
    return atomic_write(path, suffix, lambda temp: savers[suffix](volume, temp), overwrite)


def atomic_write(path: Path, suffix: str, write, overwrite: bool = False) -> Path:
    """Checks the target, calls ``write(temp_path)`` on a temporary file beside it, then renames it.

    Raises:
        IvdsegError: target is a folder, exists and not ``overwrite``, folder missing or not writable, or the
            write failed; no temporary file is left behind.
    """
    if path.is_dir():
        raise IvdsegError(f"{path} is a folder; give a file name ending in {suffix}.")
    if path.exists() and not overwrite:
        raise IvdsegError(f"{path} already exists; choose another name or pass --overwrite.")
    folder = path.parent
    if not folder.is_dir():
        raise IvdsegError(f"The folder {folder} does not exist; create it first or choose another output path.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise IvdsegError(f"The folder {folder} is not writable; choose another output folder.")
    # Same suffix as the target, so nibabel and pynrrd pick the same format; same folder, so os.replace is atomic.
    temp = folder / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}"
    try:
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # normal permissions, not mkstemp's 0600
        write(temp)
        os.replace(temp, path)
    except OSError as exc:
        raise IvdsegError(f"{path} could not be written ({exc.strerror or exc}); check the free disk space and "
                          "the folder's permissions.") from exc
    finally:
        if temp.exists():
            temp.unlink()
    return path


@dataclass
class SliceMapping:
    """How a volume's array was turned into a sagittal slice stack, and back.

    Attributes:
        axes: array axes of the volume (0 = k, 1 = j, 2 = i) that became stack axes (slice, row, column).
        flips: for each stack axis, whether it was reversed after the transpose.
        volume_shape: (K, J, I) of the source array.
        pixel_spacing_mm: (row, column) spacing in mm.
        slice_spacing_mm: spacing between slices in mm.
        obliquity_deg: largest angle between a chosen voxel axis and its anatomical axis.
    """

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    volume_shape: tuple[int, int, int]
    pixel_spacing_mm: tuple[float, float]
    slice_spacing_mm: float
    obliquity_deg: float

    @property
    def stack_shape(self) -> tuple[int, int, int]:
        """(N, H, W) of the slice stack."""
        return tuple(self.volume_shape[a] for a in self.axes)

    def to_stack(self, array: np.ndarray) -> np.ndarray:
        """Maps an array of the volume's shape (K, J, I, ...) to a stack (N, H, W, ...)."""
        if tuple(array.shape[:3]) != self.volume_shape:
            raise ValueError(f"Expected an array of shape {self.volume_shape} (K, J, I); got {array.shape}.")
        order = tuple(self.axes) + tuple(range(3, array.ndim))
        stack = np.transpose(array, order)
        stack = np.flip(stack, axis=[n for n in range(3) if self.flips[n]])
        return np.ascontiguousarray(stack)

    def to_volume(self, stack: np.ndarray) -> np.ndarray:
        """Maps a slice stack (N, H, W, ...), e.g. a predicted labelmap, back to the volume's (K, J, I, ...)."""
        if tuple(stack.shape[:3]) != self.stack_shape:
            raise ValueError(f"Expected a stack of shape {self.stack_shape} (N, H, W); got {stack.shape}.")
        unflipped = np.flip(stack, axis=[n for n in range(3) if self.flips[n]])
        order = tuple(int(a) for a in np.argsort(self.axes)) + tuple(range(3, stack.ndim))
        return np.ascontiguousarray(np.transpose(unflipped, order))


def _match_axes(direction: np.ndarray) -> tuple[int, int, int]:
    """For RAS axes x, y, z: the voxel axis (0 = i, 1 = j, 2 = k) of each, as a permutation that best aligns them."""
    weights = np.abs(direction)
    return max(itertools.permutations(range(3)), key=lambda p: sum(weights[a, p[a]] for a in range(3)))


def sagittal_mapping(volume: Volume) -> SliceMapping:
    """The :class:`SliceMapping` that :func:`sagittal_slices` applies; see there for the convention."""
    direction = volume.direction_ijk_to_ras
    if not np.all(np.isfinite(direction)) or abs(np.linalg.det(direction)) < 1e-6:
        raise ValueError(f"The volume's IJK-to-RAS matrix is degenerate:\n{volume.ijk_to_ras}")
    voxel_of_ras = _match_axes(direction)
    # Stack axes (slice, row, column) follow RAS axes x, z, y, each towards decreasing RAS: left, inferior, posterior.
    ras_axes = (0, 2, 1)
    axes, flips = [], []
    for ras in ras_axes:
        voxel = voxel_of_ras[ras]
        axes.append(2 - voxel)  # voxel axis i is array axis 2
        flips.append(bool(direction[ras, voxel] > 0))
    cosines = [abs(direction[ras, voxel_of_ras[ras]]) for ras in range(3)]
    obliquity = float(np.degrees(np.arccos(np.clip(min(cosines), 0.0, 1.0))))
    spacing = volume.spacing_ijk_mm
    return SliceMapping(
        axes=tuple(axes), flips=tuple(flips), volume_shape=tuple(volume.array.shape),
        pixel_spacing_mm=(float(spacing[voxel_of_ras[2]]), float(spacing[voxel_of_ras[1]])),
        slice_spacing_mm=float(spacing[voxel_of_ras[0]]), obliquity_deg=obliquity,
    )


def sagittal_slices(volume: Volume) -> tuple[np.ndarray, SliceMapping]:
    """Cuts a volume into sagittal slices in a fixed anatomical convention, by axis permutations and flips only.

    For each anatomical axis the voxel axis most aligned with it is chosen (no resampling), so an oblique volume
    is sliced along its own grid; ``mapping.obliquity_deg`` says how far off that is.

    Args:
        volume: any 3D volume; array (K, J, I) in any orientation.

    Returns:
        ``(stack, mapping)``: ``stack`` has shape (N, H, W) with axis 0 = slices from the patient's RIGHT to LEFT
        (increasing DICOM/LPS x, the usual order of a sagittal DICOM series), rows = superior -> inferior,
        columns = anterior -> posterior (as 2D sagittal PNGs: top = superior, left = anterior). ``mapping`` is the
        :class:`SliceMapping`; ``mapping.to_volume(stack)`` gives the (K, J, I) array back exactly.

    Raises:
        ValueError: the volume's matrix is degenerate.
    """
    mapping = sagittal_mapping(volume)
    return mapping.to_stack(volume.array), mapping
