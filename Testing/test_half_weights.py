"""Packages whose weights are stored as float16: half the bytes, the same network once loaded, and ONNX Runtime runs
the halved ONNX copy in float32."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
from ivdseg.errors import IvdsegError  # noqa: E402
from ivdseg.models import half  # noqa: E402
from ivdseg.models.package import load_package, save_package  # noqa: E402
from ivdseg.models.terminology import class_entries  # noqa: E402
from ivdseg.nn import networks  # noqa: E402

CARD = {
    "name": "half-model", "version": "0.0.1", "network": "unet2d", "input_size": 32, "channels": 1,
    "normalization": {"method": "percentile", "percentiles": [0.5, 99.5]}, "slice_plane": "sagittal",
    "classes": class_entries(["background", "intervertebral disc"]),
}


def _model():
    keras.utils.set_random_seed(0)
    model = networks.build_unet2d(input_size=32, depth=2, base_filters=8)
    x = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    model(x)
    return model


def _weight_dtypes(keras_file):
    dtypes = set()
    with zipfile.ZipFile(keras_file) as zf, zf.open(half.KERAS_WEIGHTS) as raw:
        with h5py.File(raw, "r") as f:
            f.visititems(lambda _, obj: dtypes.add(obj.dtype.name) if isinstance(obj, h5py.Dataset) else None)
    return dtypes


def _array_bytes(keras_file):
    total = []
    with zipfile.ZipFile(keras_file) as zf, zf.open(half.KERAS_WEIGHTS) as raw:
        with h5py.File(raw, "r") as f:
            f.visititems(lambda _, obj: total.append(obj.nbytes) if isinstance(obj, h5py.Dataset) else None)
    return sum(total)


def test_round_weights_moves_each_weight_to_its_nearest_float16_value():
    model = _model()
    before = model.get_weights()
    half.round_weights(model)
    for old, new in zip(before, model.get_weights()):
        assert new.dtype == np.float32
        np.testing.assert_array_equal(new, old.astype(np.float16).astype(np.float32))
    assert any(not np.array_equal(old, new) for old, new in zip(before, model.get_weights()))


def test_a_weight_beyond_float16_is_refused_in_one_sentence():
    model = _model()
    weights = model.get_weights()
    weights[0] = weights[0].copy()
    weights[0].flat[0] = 1e5
    model.set_weights(weights)
    with pytest.raises(IvdsegError, match="beyond float16's range.*--weights float32"):
        half.round_weights(model)


def test_a_float16_package_is_half_the_size_and_loads_as_the_rounded_float32_network(tmp_path):
    model = _model()
    full = save_package(model, CARD, tmp_path / "full")
    half.round_weights(model)
    small = save_package(model, CARD, tmp_path / "small", weights="float16")
    assert _weight_dtypes(full / "model.keras") == {"float32"}
    assert _weight_dtypes(small / "model.keras") <= {"float16", "int64", "int32"}
    assert _array_bytes(small / "model.keras") * 2 == _array_bytes(full / "model.keras")
    assert (small / "model.keras").stat().st_size < (full / "model.keras").stat().st_size
    loaded, card = load_package(small)
    assert card["weights_storage"] == "float16"
    assert "weights stored as float16" in (small / "MODEL_CARD.md").read_text()
    assert all(w.dtype == "float32" for w in loaded.weights)
    for stored, rounded in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(stored, rounded)  # float16 holds the rounded values exactly
    _, full_card = load_package(full)
    assert "weights_storage" not in full_card


def test_the_halved_onnx_copy_runs_in_float32_and_agrees_with_keras(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from ivdseg.models.onnx_export import export_onnx

    model = _model()
    half.round_weights(model)
    onnx_file = export_onnx(model, tmp_path / "model.onnx")
    package = save_package(model, CARD, tmp_path / "pkg", extra_files={"model.onnx": onnx_file}, weights="float16")
    graph = onnx.load(str(package / "model.onnx")).graph
    assert all(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer
               if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    assert sum(node.op_type == "Cast" for node in graph.node) >= 1
    assert (package / "model.onnx").stat().st_size < 0.6 * onnx_file.stat().st_size
    session = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((3, 32, 32, 1), dtype=np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert got.dtype == np.float32
    assert np.abs(got - np.asarray(model(x))).max() < half.MAX_HALF_ONNX_DIFF
    assert half.check_half_onnx(package / "model.onnx", model) < half.MAX_HALF_ONNX_DIFF


def test_an_onnx_copy_that_disagrees_is_not_packaged(tmp_path):
    pytest.importorskip("onnxruntime")
    from ivdseg.models.onnx_export import export_onnx

    model, other = _model(), networks.build_unet2d(input_size=32, depth=2, base_filters=8)
    other(np.zeros((1, 32, 32, 1), np.float32))
    onnx_file = export_onnx(other, tmp_path / "other.onnx")  # another network's weights
    with pytest.raises(IvdsegError, match="differs from the Keras model"):
        save_package(model, CARD, tmp_path / "pkg", extra_files={"model.onnx": onnx_file}, weights="float16")
    assert not (tmp_path / "pkg").exists()


def test_an_unknown_storage_is_refused(tmp_path):
    with pytest.raises(IvdsegError, match="float32, float16"):
        save_package(_model(), CARD, tmp_path / "pkg", weights="int8")
