"""Volumes and their geometry: the :class:`Volume` every reader returns, and sagittal slicing by axis permutation.

A :class:`Volume` holds its voxels in Slicer's order, ``array[k, j, i]`` (slowest axis = k, as
``slicer.util.arrayFromVolume`` gives them), and the 4x4 matrix that maps a voxel index ``(i, j, k, 1)`` to RAS
millimetres (Slicer's IJKToRAS). The file formats (:mod:`ivdseg.io.volumes`, :mod:`ivdseg.io.dicom`) convert
their own conventions to this one; this module depends on none of them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


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


def is_degenerate(ijk_to_ras: np.ndarray) -> bool:
    """True when a 4x4 IJK-to-RAS matrix has a non-finite value, a zero-length axis or two parallel axes.

    Such a matrix maps the voxel grid onto a plane or a line, so no slicing plane and no spacing can be derived.
    """
    matrix = np.asarray(ijk_to_ras, dtype=np.float64)
    if not np.all(np.isfinite(matrix[:3, :4])):
        return True
    axes = matrix[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if lengths.min() <= 1e-9:
        return True
    return abs(np.linalg.det(axes / lengths)) < 1e-6


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
    if is_degenerate(volume.ijk_to_ras):
        raise ValueError(f"The volume's IJK-to-RAS matrix is degenerate:\n{volume.ijk_to_ras}")
    direction = volume.direction_ijk_to_ras
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


def stack_volume(stack: np.ndarray, pixel_spacing_mm=(1.0, 1.0), slice_spacing_mm=1.0) -> Volume:
    """A Volume whose :func:`sagittal_slices` are ``stack`` (N, H, W) itself (slices right -> left, rows
    superior -> inferior, columns anterior -> posterior), with the given spacing (NaN, as for PNG slices, reads 1)."""
    row, col = (float(s) if np.isfinite(s) else 1.0 for s in pixel_spacing_mm)
    between = float(slice_spacing_mm) if np.isfinite(slice_spacing_mm) else 1.0
    ijk_to_ras = np.array([[0.0, 0.0, -between, 0.0], [-col, 0.0, 0.0, 0.0], [0.0, -row, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])
    return Volume(np.asarray(stack), ijk_to_ras)


def stored_mapping(volume: Volume) -> SliceMapping:
    """The identity :class:`SliceMapping`: the array's own slices (K, J, I) -> (N, H, W), for models trained on 2D
    images as stored (card ``slice_plane`` "as stored", e.g. axial abdominal PNG slices) rather than on sagittal
    slices found from the geometry."""
    spacing = volume.spacing_ijk_mm
    return SliceMapping(axes=(0, 1, 2), flips=(False, False, False), volume_shape=tuple(volume.array.shape),
                        pixel_spacing_mm=(float(spacing[1]), float(spacing[0])), slice_spacing_mm=float(spacing[2]),
                        obliquity_deg=0.0)
