"""Segmentation: geometry round trips, batching, both backends, and bad inputs (exit 2, nothing written)."""

from __future__ import annotations

import json

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
from conftest import require_data, require_slicer_core
from dicom_builders import _series

keras = pytest.importorskip("keras")
from ivdseg import cli
from ivdseg.nn import networks  # noqa: E402
from ivdseg.inference.backends import load_backend  # noqa: E402
from ivdseg.models.onnx_export import export_onnx  # noqa: E402
from ivdseg.models.package import save_package  # noqa: E402
from ivdseg.models.terminology import class_entries  # noqa: E402
from ivdseg.inference.segment import segment_volume  # noqa: E402
from ivdseg.io.geometry import Volume, sagittal_slices
from ivdseg.io.volumes import read_volume, write_volume  # noqa: E402


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    """An untrained but deterministic package (input 32 px), with its ONNX copy."""
    keras.utils.set_random_seed(0)
    model = networks.build_unet2d(input_size=32, depth=2, base_filters=4)
    card = {"name": "tiny", "version": "0.0.0", "network": "unet2d", "input_size": 32, "channels": 1,
            "normalization": {"method": "percentile", "percentiles": [0.5, 99.5]}, "slice_plane": "sagittal",
            "classes": class_entries(["background", "intervertebral disc"])}
    tmp = tmp_path_factory.mktemp("pkg")
    onnx_path = export_onnx(model, tmp / "model.onnx")
    return save_package(model, card, tmp / "tiny", extra_files={"model.onnx": onnx_path})


def _volume(shape_kji=(12, 20, 16), seed=0, ijk_to_ras=None):
    rng = np.random.default_rng(seed)
    arr = rng.normal(100, 30, shape_kji).astype(np.float32)
    arr[:, 5:9, 4:10] += 200  # something bright for the network to see
    if ijk_to_ras is None:  # PSR-like: i -> posterior, j -> inferior, k -> right
        ijk_to_ras = np.array([[0, 0, 1.5, -10], [-0.8, 0, 0, 20], [0, -0.9, 0, 30], [0, 0, 0, 1]], float)
    return Volume(arr, ijk_to_ras)


LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


def _nrrd_ijk_to_ras(path) -> np.ndarray:
    """IJK-to-RAS of an NRRD file from its raw header (pynrrd), converted by hand: independent of ivdseg."""
    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior"
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(header["space directions"], float).T * LPS_TO_RAS[:, None]  # rows are i, j, k
    matrix[:3, 3] = np.array(header["space origin"], float) * LPS_TO_RAS
    return matrix


def test_labelmap_has_the_input_geometry_for_non_ras_volume(tiny_package, tmp_path):
    volume = _volume()
    write_volume(volume, tmp_path / "in.nii.gz")
    code = cli.main(["segment", str(tmp_path / "in.nii.gz"), "-o", str(tmp_path / "out.nrrd"), "--model",
                     str(tiny_package), "--progress", "none", "--backend", "onnx"])
    assert code == 0
    given = nib.load(tmp_path / "in.nii.gz")  # what any NIfTI reader sees in the input
    hand = np.array([[0, 0, 1.5, -10], [-0.8, 0, 0, 20], [0, -0.9, 0, 30], [0, 0, 0, 1]])  # _volume's PSR-like grid
    np.testing.assert_allclose(given.affine, hand, atol=1e-5)
    np.testing.assert_allclose(_nrrd_ijk_to_ras(tmp_path / "out.nrrd"), hand, atol=1e-5)
    assert list(nrrd.read_header(str(tmp_path / "out.nrrd"))["sizes"]) == list(given.shape)  # (I, J, K)
    out = read_volume(tmp_path / "out.nrrd")
    assert out.array.dtype == np.uint8
    sidecar = json.loads((tmp_path / "out.nrrd.json").read_text())
    assert sidecar["labels"][0]["name"] == "intervertebral disc"


def test_batching_gives_the_same_labels_as_one_slice_at_a_time(tiny_package):
    backend = load_backend(tiny_package, "tensorflow", "cpu")
    volume = _volume(seed=1)
    batched = segment_volume(volume, backend.predict, backend.card, batch_size=7).labelmap.array
    single = segment_volume(volume, backend.predict, backend.card, batch_size=1).labelmap.array
    np.testing.assert_array_equal(batched, single)


def test_onnx_and_tensorflow_backends_give_the_same_probabilities(tiny_package):
    from ivdseg.inference.predict import prepare_slices

    tf_backend = load_backend(tiny_package, "tensorflow", "cpu")
    onnx_backend = load_backend(tiny_package, "onnx", "cpu")
    assert onnx_backend.name == "onnx" and tf_backend.name == "tensorflow"
    stack, _ = sagittal_slices(_volume(seed=2))
    batch = prepare_slices(stack, tf_backend.card)
    a, b = tf_backend.predict(batch), onnx_backend.predict(batch)
    assert a.shape == b.shape == (len(stack), 32, 32, 2)
    assert np.abs(a - b).max() < 1e-5
    assert load_backend(tiny_package, "auto", "cpu").name == "onnx"


def test_dicom_series_labelmap_has_the_series_geometry(tiny_package, tmp_path):
    _series(tmp_path / "dcm")  # sagittal IOP (0,1,0 / 0,0,-1), PixelSpacing 0.5 x 0.75, 3 mm, first IPP (10,-20,30)
    out = tmp_path / "out.nii.gz"
    assert cli.main(["segment", str(tmp_path / "dcm"), "-o", str(out), "--model", str(tiny_package),
                     "--progress", "none"]) == 0
    # by hand: i = row cosine x 0.75 mm, j = column cosine x 0.5 mm, k = normal (-1, 0, 0) x 3 mm, all LPS -> RAS
    hand = np.array([[0, 0, 3.0, -10.0], [-0.75, 0, 0, 20.0], [0, -0.5, 0, 30.0], [0, 0, 0, 1]])
    image = nib.load(out)
    np.testing.assert_allclose(image.affine, hand, atol=1e-5)
    assert image.shape == (6, 4, 5)  # (Columns, Rows, slices)


def test_real_dicom_series_labelmap_matches_its_tags(tiny_package, tmp_path):
    """The real sagittal series: the labelmap's matrix against the dcm2niix sidecar and the raw headers."""
    folder = require_data("dicom_mr_sagittal_series/In")
    sidecar = json.loads(next(folder.parent.glob("Ref_dcm2niix_*.json")).read_text())
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(folder.rglob("*.dcm"))]
    out = tmp_path / "out.nii.gz"
    assert cli.main(["segment", str(folder), "-o", str(out), "--model", str(tiny_package), "--progress", "none"]) == 0
    iop = np.array(sidecar["ImageOrientationPatientDICOM"], float)
    row_mm, col_mm = (float(v) for v in headers[0].PixelSpacing)
    normal = np.cross(iop[:3], iop[3:])  # (-1, 0, 0): towards the patient's right
    first = max(headers, key=lambda h: float(h.ImagePositionPatient[0]))  # the leftmost slice comes first
    hand = np.eye(4)
    hand[:3, 0] = iop[:3] * col_mm * LPS_TO_RAS
    hand[:3, 1] = iop[3:] * row_mm * LPS_TO_RAS
    hand[:3, 2] = normal * sidecar["SpacingBetweenSlices"] * LPS_TO_RAS
    hand[:3, 3] = np.array(first.ImagePositionPatient, float) * LPS_TO_RAS
    image = nib.load(out)
    np.testing.assert_allclose(image.affine, hand, atol=1e-4)
    assert image.shape == (256, 256, len(headers)) == (256, 256, 35)


def test_real_psr_cervical_volume_round_trip(tiny_package, tmp_path):
    path = next(require_data("sct_cervical_t2/t2").glob("*.nii*"))
    given = nib.load(path)
    out = tmp_path / "out.nii.gz"
    assert cli.main(["segment", str(path), "-o", str(out), "--model", str(tiny_package), "--batch-size", "32",
                     "--progress", "none"]) == 0
    written = nib.load(out)
    np.testing.assert_allclose(written.affine, given.affine, atol=1e-4)
    assert written.shape == given.shape and nib.aff2axcodes(written.affine) == ("P", "S", "R")
    volume = read_volume(path)
    _, mapping = sagittal_slices(volume)
    np.testing.assert_array_equal(mapping.to_volume(mapping.to_stack(volume.array)), volume.array)


def _segment(args, capsys):
    code = cli.main([str(a) for a in args] + ["--progress", "none"])
    err = capsys.readouterr().err
    return code, err


def test_axial_thick_slices_are_refused(tiny_package, tmp_path, capsys):
    axial = np.diag([0.5, 0.5, 6.0, 1.0])  # i -> R, j -> A, k -> S with 6 mm slices: axial
    write_volume(_volume((8, 20, 20), ijk_to_ras=axial), tmp_path / "ax.nii.gz")
    code, err = _segment(["segment", tmp_path / "ax.nii.gz", "-o", tmp_path / "o.nii.gz", "--model", tiny_package],
                         capsys)
    assert code == 2 and "not a sagittal acquisition" in err and "Traceback" not in err
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("case", ["empty", "not_dicom", "missing_folder", "unwritable", "bad_model", "exists"])
def test_bad_inputs_end_in_one_sentence_and_no_output(case, tiny_package, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    out = tmp_path / "o.nii.gz"
    model = tiny_package
    if case == "not_dicom":
        (src / "notes.txt").write_text("hello")
    elif case in ("missing_folder", "unwritable", "bad_model", "exists"):
        write_volume(_volume(), src / "v.nii.gz")
        src = src / "v.nii.gz"
        if case == "missing_folder":
            out = tmp_path / "nowhere" / "o.nii.gz"
        elif case == "unwritable":
            out = tmp_path / "o.png"
        elif case == "bad_model":
            model = tmp_path / "broken"
            model.mkdir()
            (model / "model.json").write_text("{}")
        else:
            out.write_bytes(b"keep me")
    code, err = _segment(["segment", src, "-o", out, "--model", model], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".*tmp*"))


def _dicom_case(case, folder):
    from dicom_builders import BASIC_TEXT_SR_STORAGE, OBLIQUE_IOP, _dataset

    if case == "truncated":
        _series(folder)
        victim = folder / "slice3.dcm"
        victim.write_bytes(victim.read_bytes()[:-20])
        return "slice3.dcm"
    if case == "no_pixels":
        folder.mkdir()
        _dataset(sop_class=BASIC_TEXT_SR_STORAGE, Modality="SR").save_as(folder / "sr.dcm", enforce_file_format=True)
        return "no image series"
    if case == "missing_slice":
        _series(folder, skip=(2,))
        return "missing"
    if case == "several_series":
        _series(folder / "a", series_uid="1.2.3.4")
        _series(folder / "b", series_uid="1.2.3.5", iop=OBLIQUE_IOP)
        return "--series"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["truncated", "no_pixels", "missing_slice", "several_series"])
def test_bad_dicom_ends_in_one_sentence_and_no_output(case, tiny_package, tmp_path, capsys):
    expected = _dicom_case(case, tmp_path / "dcm")
    out = tmp_path / "o.nii.gz"
    code, err = _segment(["segment", tmp_path / "dcm", "-o", out, "--model", tiny_package], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert not out.exists()


def test_series_option_picks_one_of_several(tiny_package, tmp_path, capsys):
    _dicom_case("several_series", tmp_path / "dcm")
    out = tmp_path / "o.nii.gz"
    code, err = _segment(["segment", tmp_path / "dcm", "-o", out, "--model", tiny_package, "--series", "1.2.3.4"],
                         capsys)
    assert code == 0, err
    assert read_volume(out).array.shape == (5, 4, 6)


def test_a_damaged_file_of_another_series_is_a_warning_event_for_the_gui(tiny_package, tmp_path, capsys):
    import json

    _dicom_case("several_series", tmp_path / "dcm")
    victim = tmp_path / "dcm" / "b" / "slice2.dcm"
    victim.write_bytes(victim.read_bytes()[:200])
    out = tmp_path / "o.nii.gz"
    code = cli.main([str(a) for a in ["segment", tmp_path / "dcm", "-o", out, "--model", tiny_package, "--series",
                                      "1.2.3.4", "--progress", "jsonl"]])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [e for e in map(json.loads, captured.out.splitlines()) if e["event"] == "warning"]
    assert len(warnings) == 1 and "slice2.dcm" in warnings[0]["message"]
    assert read_volume(out).array.shape == (5, 4, 6)


def test_seg_nrrd_output_opens_as_a_slicer_segmentation(tiny_package, tmp_path):
    slicer = require_slicer_core()
    volume = _volume(seed=3)
    write_volume(volume, tmp_path / "in.nii.gz")
    out = tmp_path / "discs.seg.nrrd"
    assert cli.main(["segment", str(tmp_path / "in.nii.gz"), "-o", str(out), "--model", str(tiny_package),
                     "--progress", "none"]) == 0
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(out))
    assert storage.ReadData(node) == 1
    segment = node.GetSegmentation().GetSegment("Segment_1")
    assert segment.GetName() == "intervertebral disc" and "360499006" in segment.GetTerminology()


BLOCK_TENSORFLOW = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf2onnx"):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None
sys.meta_path.insert(0, _Block())
from ivdseg.cli import main
code = main(sys.argv[1:])
assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in sys.modules), "TensorFlow was imported"
sys.exit(code)
"""


def test_inference_runs_without_tensorflow(tiny_package, tmp_path):
    """What Slicer users get: ONNX Runtime alone segments, and auto picks it when TensorFlow is absent."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    write_volume(_volume(seed=4), tmp_path / "in.nii.gz")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "IVDSegmentation")}
    proc = subprocess.run([sys.executable, "-c", BLOCK_TENSORFLOW, "segment", str(tmp_path / "in.nii.gz"), "-o",
                           str(tmp_path / "out.nii.gz"), "--model", str(tiny_package), "--progress", "jsonl"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(onnx)" in proc.stdout
    assert read_volume(tmp_path / "out.nii.gz").array.shape == (12, 20, 16)


def test_test_time_augmentation_averages_scaled_passes_and_is_off_unless_the_card_says():
    from ivdseg.inference.predict import with_tta

    calls = []

    def pointwise(batch):  # a "network" whose answer at a pixel depends on that pixel only
        calls.append(len(batch))
        x = batch[..., 0]
        return np.stack([1 - x, x], axis=-1)

    y, x = np.mgrid[0:64, 0:64]
    batch = np.exp(-((x - 32.0) ** 2 + (y - 30.0) ** 2) / 200.0)[None, ..., None].astype(np.float32)
    assert with_tta(pointwise, {}) is pointwise and with_tta(pointwise, {"tta": {"enabled": False}}) is pointwise
    augmented = with_tta(pointwise, {"tta": {"enabled": True, "scales": [0.9, 1.0, 1.1]}})(batch)
    assert len(calls) == 3 and augmented.shape == (1, 64, 64, 2)
    np.testing.assert_allclose(augmented.sum(-1), 1.0, atol=1e-5)  # still probabilities
    # zooming a smooth image and back changes a pointwise answer only by interpolation
    assert np.abs(augmented[0, 8:56, 8:56, 1] - batch[0, 8:56, 8:56, 0]).max() < 0.02
