"""Tests of ivdseg.io.volumes and ivdseg.io.geometry: NIfTI/NRRD reading and writing with geometry, and sagittal slicing."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from conftest import require_data

import ivdseg.io.volumes as volume_module
from ivdseg.errors import IvdsegError
from ivdseg.io.geometry import Volume, sagittal_slices
from ivdseg.io.volumes import read_volume, write_volume




def _affine(columns, origin) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(columns, float).T
    matrix[:3, 3] = origin
    return matrix


# i, j, k columns in RAS: an LPS-aligned grid and a PSR one (i -> posterior, j -> superior, k -> right).
LPS_AFFINE = _affine([[-0.5, 0, 0], [0, -0.75, 0], [0, 0, 2.0]], [12.5, -30.25, 7.0])
PSR_AFFINE = _affine([[0, -1.25, 0], [0, 0, 0.5], [3.0, 0, 0]], [-32.5, 31.75, -19.25])


def test_volume_properties():
    volume = Volume(np.zeros((4, 3, 2), np.int16), PSR_AFFINE)
    np.testing.assert_allclose(volume.spacing_ijk_mm, [1.25, 0.5, 3.0])
    np.testing.assert_allclose(volume.direction_ijk_to_ras, [[0, 0, 1], [-1, 0, 0], [0, 1, 0]])
    np.testing.assert_allclose(volume.origin_ras, [-32.5, 31.75, -19.25])
    with pytest.raises(ValueError, match=r"shape \(K, J, I\); got \(4, 3\)"):
        Volume(np.zeros((4, 3)), np.eye(4))
    with pytest.raises(ValueError, match="must be 4x4"):
        Volume(np.zeros((4, 3, 2)), np.eye(3))


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd"])
@pytest.mark.parametrize("affine", [LPS_AFFINE, PSR_AFFINE], ids=["LPS", "PSR"])
@pytest.mark.parametrize("dtype", [np.float32, np.uint8, np.int16])
def test_write_read_round_trip(tmp_path, suffix, affine, dtype):
    rng = np.random.default_rng(0)
    array = (rng.random((5, 7, 9)) * 200).astype(dtype)
    written = write_volume(Volume(array, affine), tmp_path / f"v{suffix}")
    assert written == tmp_path / f"v{suffix}"
    back = read_volume(written)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.ijk_to_ras, affine, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"v{suffix}"]


def test_written_headers(tmp_path):
    write_volume(Volume(np.zeros((2, 3, 4), np.uint8), LPS_AFFINE), tmp_path / "v.nii.gz")
    header = nib.load(tmp_path / "v.nii.gz").header
    assert int(header["qform_code"]) in (1, 2) and int(header["sform_code"]) in (1, 2)
    np.testing.assert_allclose(header.get_qform(), LPS_AFFINE, atol=1e-5)
    assert header.get_data_dtype() == np.uint8
    write_volume(Volume(np.zeros((2, 3, 4), np.uint8), LPS_AFFINE), tmp_path / "v.nrrd")
    fields = nrrd.read_header(str(tmp_path / "v.nrrd"))
    assert fields["space"] == "left-posterior-superior" and fields["encoding"] == "gzip"
    assert list(fields["sizes"]) == [4, 3, 2]  # i, j, k
    np.testing.assert_allclose(fields["space directions"], np.diag([0.5, 0.75, 2.0]))
    np.testing.assert_allclose(fields["space origin"], [-12.5, 30.25, 7.0])


@pytest.mark.parametrize("space, signs", [("left-posterior-superior", [-1, -1, 1]),
                                          ("right-anterior-superior", [1, 1, 1]),
                                          ("left-anterior-superior", [-1, 1, 1])])
def test_nrrd_spaces_become_ras(tmp_path, space, signs):
    data_ijk = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    rows = np.array([[0, 1.5, 0], [0, 0, -2.0], [0.5, 0, 0]])  # one row per i, j, k
    nrrd.write(str(tmp_path / "x.nrrd"), data_ijk,
               {"space": space, "space directions": rows, "space origin": np.array([1.0, 2.0, 3.0])})
    volume = read_volume(tmp_path / "x.nrrd")
    np.testing.assert_array_equal(volume.array, data_ijk.transpose(2, 1, 0))
    expected = _affine(rows * np.array(signs), np.array([1.0, 2.0, 3.0]) * signs)
    np.testing.assert_allclose(volume.ijk_to_ras, expected)


def test_vector_and_4d_images_are_refused(tmp_path):
    nrrd.write(str(tmp_path / "rgb.nrrd"), np.zeros((3, 4, 5, 6), np.uint8),
               {"space": "left-posterior-superior", "kinds": ["RGB-color", "domain", "domain", "domain"],
                "space directions": np.array([[np.nan] * 3, [1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])})
    with pytest.raises(IvdsegError, match="has 4 dimensions.*3D scalar volume is needed"):
        read_volume(tmp_path / "rgb.nrrd")
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 3), np.float32), np.eye(4)), tmp_path / "t.nii.gz")
    with pytest.raises(IvdsegError, match="has 4 dimensions"):
        read_volume(tmp_path / "t.nii.gz")


def test_2d_image_is_one_slice(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((4, 5), np.int16), np.diag([0.5, 0.5, 1.0, 1.0])), tmp_path / "flat.nii")
    assert read_volume(tmp_path / "flat.nii").array.shape == (1, 5, 4)


def test_bad_paths_are_refused(tmp_path):
    volume = Volume(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    with pytest.raises(IvdsegError, match="does not exist"):
        write_volume(volume, tmp_path / "missing" / "out.nii.gz")
    with pytest.raises(IvdsegError, match="extension"):
        write_volume(volume, tmp_path / "out.png")
    with pytest.raises(IvdsegError, match="does not exist"):
        read_volume(tmp_path / "none.nii.gz")
    (tmp_path / "cut.nii.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(IvdsegError, match="cut.nii.gz"):
        read_volume(tmp_path / "cut.nii.gz")


def _nifti_with_sform(path: Path, affine: np.ndarray) -> Path:
    """A NIfTI whose only matrix is ``affine`` (sform): nibabel refuses to put a singular one in a qform."""
    image = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4))
    image.set_sform(affine, code=1)
    image.set_qform(None, code=0)
    nib.save(image, str(path))
    return path


def _nrrd_with_directions(path: Path, rows) -> Path:
    nrrd.write(str(path), np.zeros((4, 5, 6), np.int16),
               {"space": "left-posterior-superior", "space directions": np.array(rows, float)})
    return path


@pytest.mark.parametrize("make", [
    lambda d: _nifti_with_sform(d / "zero_column.nii.gz", np.diag([1.0, 0.0, 1.0, 1.0])),
    lambda d: _nrrd_with_directions(d / "zero_direction.nrrd", [[1, 0, 0], [0, 0, 0], [0, 0, 1]]),
    lambda d: _nrrd_with_directions(d / "parallel.nrrd", [[1, 0, 0], [2, 0, 0], [0, 0, 1]]),
], ids=["nifti-zero-column", "nrrd-zero-direction", "nrrd-parallel-axes"])
def test_degenerate_matrix_is_refused_at_read_time(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(IvdsegError, match=rf"{path.name} has a degenerate voxel-to-world matrix"):
        read_volume(path)


def test_refuses_to_overwrite(tmp_path):
    target = write_volume(Volume(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp_path / "out.nrrd")
    with pytest.raises(IvdsegError, match="already exists.*--overwrite"):
        write_volume(Volume(np.ones((2, 2, 2), np.uint8), np.eye(4)), target)
    write_volume(Volume(np.ones((2, 2, 2), np.uint8), np.eye(4)), target, overwrite=True)
    assert read_volume(target).array.min() == 1


def test_read_only_folder_leaves_nothing(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("running as root: chmod does not stop writes")
        with pytest.raises(IvdsegError, match="not writable"):
            write_volume(Volume(np.zeros((2, 2, 2), np.uint8), np.eye(4)), folder / "out.nii.gz")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def failing_save(volume, target):
        Path(target).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(volume_module, "_save_nifti", failing_save)
    with pytest.raises(IvdsegError, match="No space left"):
        write_volume(Volume(np.zeros((2, 2, 2), np.uint8), np.eye(4)), tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


def _canonical(n=3, h=4, w=5):
    """A volume already in the stack convention: k = right->left, j = superior->inferior, i = anterior->posterior."""
    stack = np.arange(n * h * w, dtype=np.int32).reshape(n, h, w)
    affine = _affine([[0, -0.7, 0], [0, 0, -0.5], [-3.0, 0, 0]], [10.0, 20.0, 30.0])
    return stack, Volume(stack.copy(), affine)


def _reorient(volume: Volume, axes, flips) -> Volume:
    """The same image stored with array axes transposed by ``axes`` then flipped; the geometry follows."""
    array = np.flip(np.transpose(volume.array, axes), [a for a in range(3) if flips[a]])
    affine = np.eye(4)
    old_index = np.zeros(3)  # old (i, j, k) of the new voxel (0, 0, 0)
    for new_axis in range(3):  # new array axis -> old array axis axes[new_axis]; voxel axis = 2 - array axis
        sign = -1.0 if flips[new_axis] else 1.0
        affine[:3, 2 - new_axis] = sign * volume.ijk_to_ras[:3, 2 - axes[new_axis]]
        if flips[new_axis]:
            old_index[2 - axes[new_axis]] = volume.array.shape[axes[new_axis]] - 1
    affine[:3, 3] = volume.ijk_to_ras[:3, :3] @ old_index + volume.ijk_to_ras[:3, 3]
    return Volume(np.ascontiguousarray(array), affine)


def test_sagittal_slices_all_48_orientations():
    stack, canonical = _canonical()
    for axes, flips in itertools.product(itertools.permutations(range(3)), itertools.product([False, True], repeat=3)):
        volume = _reorient(canonical, axes, flips)
        # Same physical voxel: the reoriented geometry is consistent with the canonical one.
        sliced, mapping = sagittal_slices(volume)
        np.testing.assert_array_equal(sliced, stack, err_msg=f"axes {axes} flips {flips}")
        np.testing.assert_array_equal(mapping.to_volume(sliced), volume.array)
        assert mapping.pixel_spacing_mm == pytest.approx((0.5, 0.7))
        assert mapping.slice_spacing_mm == pytest.approx(3.0)
        assert mapping.obliquity_deg == pytest.approx(0.0, abs=1e-9)


def test_reorient_helper_keeps_world_positions():
    _, canonical = _canonical()
    volume = _reorient(canonical, (2, 0, 1), (True, False, True))
    k, j, i = 1, 2, 3  # an arbitrary voxel of the new array; find it in the canonical one by world position
    world = volume.ijk_to_ras @ [i, j, k, 1]
    old_i, old_j, old_k = np.rint(np.linalg.solve(canonical.ijk_to_ras, world)[:3]).astype(int)
    assert volume.array[k, j, i] == canonical.array[old_k, old_j, old_i]


def test_to_volume_keeps_trailing_channels_and_checks_shape():
    _, canonical = _canonical()
    volume = _reorient(canonical, (1, 2, 0), (False, True, False))
    sliced, mapping = sagittal_slices(volume)
    probabilities = np.stack([sliced, -sliced], axis=-1)
    back = mapping.to_volume(probabilities)
    np.testing.assert_array_equal(back[..., 0], volume.array)
    with pytest.raises(ValueError, match=r"Expected a stack of shape \(3, 4, 5\)"):
        mapping.to_volume(sliced[:, :, :-1])


def test_obliquity_is_reported():
    _, canonical = _canonical()
    angle = np.radians(10.0)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    tilted = Volume(canonical.array, canonical.ijk_to_ras.copy())
    tilted.ijk_to_ras[:3, :3] = rotation @ canonical.ijk_to_ras[:3, :3]
    sliced, mapping = sagittal_slices(tilted)
    np.testing.assert_array_equal(sliced, canonical.array)
    assert mapping.obliquity_deg == pytest.approx(10.0)


def test_real_lumbar_nifti():
    path = require_data("ivd_lumbar_t2/nifti/case11_T2w.nii.gz")
    image = nib.load(path)
    data = np.asanyarray(image.dataobj)  # (i, j, k): S->I, A->P, L->R
    volume = read_volume(path)
    assert volume.array.shape == (67, 221, 221) and volume.array.dtype == data.dtype
    np.testing.assert_array_equal(volume.array, data.transpose(2, 1, 0))
    np.testing.assert_allclose(volume.ijk_to_ras, image.affine)
    stack, mapping = sagittal_slices(volume)
    assert stack.shape == (67, 221, 221)
    np.testing.assert_array_equal(stack[0], data[:, :, 66])  # rightmost slice first; rows S->I, columns A->P
    np.testing.assert_array_equal(stack[-1], data[:, :, 0])
    labels, _ = sagittal_slices(read_volume(require_data("ivd_lumbar_t2/nifti/case11_ivd_labels.nii.gz")))
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2, 3, 4, 5}


def test_real_cervical_psr_nifti(tmp_path):
    path = require_data("sct_cervical_t2/t2/t2.nii.gz")
    image = nib.load(path)
    assert nib.aff2axcodes(image.affine) == ("P", "S", "R")
    data = np.asanyarray(image.dataobj)
    volume = read_volume(path)
    np.testing.assert_allclose(volume.ijk_to_ras, image.affine)
    stack, mapping = sagittal_slices(volume)
    assert stack.shape == (52, 55, 60)
    # slice n = right->left (k runs towards R), row r = S->I (j runs towards S), column c = A->P (i runs towards P)
    np.testing.assert_array_equal(stack, data[:, ::-1, ::-1].transpose(2, 1, 0))
    np.testing.assert_array_equal(mapping.to_volume(stack), volume.array)
    back = read_volume(write_volume(volume, tmp_path / "t2.nrrd"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.ijk_to_ras, volume.ijk_to_ras, atol=1e-5)
