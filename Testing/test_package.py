"""Model packages: round trip, safe loading, bad packages with one-sentence errors."""

from __future__ import annotations

import json
import re
import shutil
import zipfile

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from ivdseg.nn import networks  # noqa: E402
from ivdseg.errors import IvdsegError  # noqa: E402
from ivdseg.models.package import load_package, read_card, resolve_model, save_package, update_card  # noqa: E402
from ivdseg.models.terminology import class_entries  # noqa: E402

CARD = {
    "name": "test-model", "version": "0.0.1", "network": "unet2d", "input_size": 32, "channels": 1,
    "normalization": {"method": "percentile", "percentiles": [0.5, 99.5]}, "slice_plane": "sagittal",
    "classes": class_entries(["background", "intervertebral disc"]),
}


@pytest.fixture
def package(tmp_path):
    model = networks.build_unet2d(input_size=32, depth=2, base_filters=4)
    return save_package(model, CARD, tmp_path / "pkg"), model


def test_round_trip_folder_and_zip(package, tmp_path):
    path, model = package
    x = np.random.default_rng(0).random((1, 32, 32, 1), dtype=np.float32)
    loaded, card = load_package(path)
    assert card["classes"][0]["terminology"]["type"] == ["SCT", "360499006", "Intervertebral disc"]
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    archive = shutil.make_archive(str(tmp_path / "pkg"), "zip", path)
    loaded_zip, card_zip = load_package(archive)
    assert card_zip == card
    np.testing.assert_allclose(np.asarray(loaded_zip(x)), np.asarray(model(x)), atol=1e-6)


def test_a_measured_inference_time_goes_into_the_card_and_its_markdown(package):
    path, _ = package
    weights = (path / "model.keras").read_bytes()
    timing = {"volume": "67 sagittal slices of 221 x 221 (case25_T2w.nii.gz)", "cpu_cores": 2, "cpu": "Some CPU",
              "repeats": 5, "command": "python Testing/benchmarks/bench_segment.py --model PACKAGE --record",
              "backends": {"onnx": {"segment_seconds": 1.234, "process_seconds": 3.21, "device": "cpu"}}}
    card = update_card(path, {"inference_time": timing})
    assert read_card(path) == card and card["inference_time"] == timing and card["name"] == CARD["name"]
    markdown = (path / "MODEL_CARD.md").read_text()
    assert ("- inference time, 67 sagittal slices of 221 x 221 (case25_T2w.nii.gz), 2 CPU cores (Some CPU): onnx "
            "3.2 s for the whole command (1.23 s once loaded); median of 5") in markdown
    assert (path / "model.keras").read_bytes() == weights
    with pytest.raises(IvdsegError, match="not a model package folder"):
        update_card(path / "missing", {"x": 1})


def test_the_card_says_how_large_each_class_is_drawn_and_older_cards_still_render():
    from ivdseg.models.card import render

    scores = {"dice": {"intervertebral disc": 0.8}, "dice_patient_mean": {"intervertebral disc": 0.79},
              "patients": 3, "volume_ratio": {"intervertebral disc": 1.234}}
    old = {k: v for k, v in scores.items() if k != "volume_ratio"}  # a card written before the figure existed
    markdown = render({**CARD, "test": {"overall": scores, "per_source": {"site": old}}})
    assert "| all sources (pooled) | 3 | 0.8000 | 0.7900 | 1.23 |" in markdown
    assert "| site | 3 | 0.8000 | 0.7900 | n/a |" in markdown and "predicted / true size" in markdown


def test_missing_card(package):
    path, _ = package
    (path / "model.json").unlink()
    with pytest.raises(IvdsegError, match="model.json is missing"):
        load_package(path)


def test_incomplete_card(package):
    path, _ = package
    card = json.loads((path / "model.json").read_text())
    del card["classes"]
    (path / "model.json").write_text(json.dumps(card))
    with pytest.raises(IvdsegError, match="lacks classes"):
        read_card(path)


def test_card_that_does_not_fit_the_network(package):
    path, _ = package
    card = json.loads((path / "model.json").read_text())
    card["input_size"] = 64
    (path / "model.json").write_text(json.dumps(card))
    with pytest.raises(IvdsegError, match="card says input"):
        load_package(path)


def _rewrite_config(keras_path, edit):
    with zipfile.ZipFile(keras_path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(keras_path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)


def test_unregistered_layer_is_refused(package):
    path, _ = package

    def rename_layer(config):
        layer = config["config"]["layers"][1]
        layer["class_name"] = "MysteryConv"
        layer["module"] = "somewhere.unknown"

    _rewrite_config(path / "model.keras", rename_layer)
    with pytest.raises(IvdsegError, match="model.keras"):
        load_package(path)


def test_lambda_layer_is_refused_by_safe_mode(tmp_path):
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    x = keras.layers.Conv2D(2, 1, activation="softmax")(x)
    path = save_package(keras.Model(inputs, x), CARD, tmp_path / "lam")
    with pytest.raises(IvdsegError, match="Lambda|safe mode|not a loadable"):
        load_package(path)


def test_not_a_package(tmp_path):
    with pytest.raises(IvdsegError, match="not a model package"):
        load_package(tmp_path / "nothing")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(IvdsegError, match="not a valid zip"):
        load_package(tmp_path / "bad.zip")


def test_save_refuses_to_clobber(package):
    path, model = package
    with pytest.raises(IvdsegError, match="already exists"):
        save_package(model, CARD, path)


def test_resolve_unknown_model_name():
    with pytest.raises(IvdsegError, match="No model package at no-such-model"):
        resolve_model("no-such-model")


def _keras_file(path, objects):
    """A .keras archive whose config holds ``objects`` as the layers of a functional model."""
    config = {"module": "keras.src.models.functional", "class_name": "Functional", "registered_name": "Functional",
              "config": {"layers": objects}}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("metadata.json", "{}")
    return path


@pytest.mark.parametrize("obj, words", [
    ({"module": "keras.layers", "class_name": "TFSMLayer", "config": {"filepath": "/tmp/x"}}, "keras.layers.TFSMLayer"),
    ({"module": "keras.layers", "class_name": "Lambda", "config": {}}, "keras.layers.Lambda"),
    ({"module": "os", "class_name": "system", "config": "id"}, "os.system"),
    ({"module": "builtins", "class_name": "function", "config": "exec"}, "builtins.function"),
    ({"module": "keras.layers", "class_name": "Dense", "registered_name": "evil>Dense"}, "keras.layers.Dense"),
    ({"module": "ivdseg.nn.losses", "class_name": "Anything", "registered_name": "other>Anything"}, "Anything"),
])
def test_a_model_naming_code_outside_keras_and_ivdseg_is_refused_unloaded(obj, words, tmp_path):
    from ivdseg.models.package import check_keras_file, load_keras_model

    path = _keras_file(tmp_path / "m.keras", [{"module": "keras.layers", "class_name": "InputLayer"}, obj])
    with pytest.raises(IvdsegError, match=re.escape(words)):
        check_keras_file(path)
    with pytest.raises(IvdsegError, match="refused without being loaded"):
        load_keras_model(path)


def test_every_network_of_ivdseg_passes_the_check(tmp_path):
    from ivdseg.models.package import check_keras_file

    check_keras_file(resolve_model() / "model.keras")
    for network, activation in (("unet2d", "mish"), ("res_se_unet", "swish"), ("deeplabv3plus", "relu")):
        model = networks.build_model(network, input_size=32 if network != "deeplabv3plus" else 64, num_classes=3,
                                     activation=activation, depth=2 if network != "deeplabv3plus" else 4,
                                     base_filters=4)
        model.save(tmp_path / f"{network}.keras")
        check_keras_file(tmp_path / f"{network}.keras")
    keypoints = networks.KEYPOINT_NETWORKS["keypoint_unet"](input_size=32, num_keypoints=3, depth=2, base_filters=4)
    keypoints.save(tmp_path / "keypoints.keras")
    check_keras_file(tmp_path / "keypoints.keras")  # leaky ReLU is Keras's own
    check_keras_file(resolve_model("ivd-lumbosacral-2d") / "model.keras")
    with pytest.raises(IvdsegError, match="not a Keras model file"):
        check_keras_file(_write_bytes(tmp_path / "junk.keras", b"not a zip"))


def _write_bytes(path, data):
    path.write_bytes(data)
    return path
