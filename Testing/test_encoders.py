"""U-Nets on keras.applications EfficientNet encoders: registration, shapes, arguments, local ImageNet-format
weights (legacy .h5 as keras.applications ships them), safe-mode round trip, ONNX export.

Only B0 is built at 64 px (and B1 once): building every variant would take minutes.
"""

import inspect

import numpy as np
import pytest

keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
from ivdseg.errors import IvdsegError  # noqa: E402
from ivdseg.models.package import load_keras_model  # noqa: E402
from ivdseg.nn import encoders, networks  # noqa: E402

SIZE = 64
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)


def b0(**kwargs):
    kwargs = {"input_size": SIZE, "base_filters": 4, **kwargs}
    return networks.build_model("efficientnet_b0_unet", **kwargs)


def write_legacy_weights(model, path):
    """``model``'s weights in the layout of the Keras ``efficientnetb{k}_notop.h5`` files (Keras 2's HDF5
    ``save_weights``): root attribute ``layer_names``; per layer a group whose attribute ``weight_names`` lists
    its datasets, trainable weights first."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([layer.name.encode() for layer in model.layers])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.4.0"
        for layer in model.layers:
            group = f.create_group(layer.name)
            weights = layer.trainable_weights + layer.non_trainable_weights
            names = [f"{layer.name}/{w.name}:0" for w in weights]
            group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            for name, w in zip(names, weights):
                group.create_dataset(name, data=np.asarray(w))


def bare_encoder(variant, seed):
    keras.utils.set_random_seed(seed)
    return getattr(keras.applications, f"EfficientNetB{variant}")(
        include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))


def test_every_variant_is_registered_with_the_common_signature():
    names = [f"efficientnet_b{k}_unet" for k in range(8)]
    assert set(names) <= set(networks.NETWORKS)
    common = list(inspect.signature(networks.build_unet2d).parameters.items())
    for name in names:
        params = inspect.signature(networks.NETWORKS[name]).parameters
        assert list(params.items())[:-1] == common, name
        assert list(params)[-1] == "encoder_weights" and params["encoder_weights"].default is None


SHAPE_CASES = [
    # channels, num_classes, output, activation
    (1, 3, "softmax", "relu"),
    (3, 3, "sigmoid", "mish"),  # 3 outputs near 0.5 each: a sum near 1.5, not 1
]


@pytest.mark.parametrize("channels,num_classes,output,activation", SHAPE_CASES)
def test_shapes_and_probabilities(channels, num_classes, output, activation):
    model = b0(channels=channels, num_classes=num_classes, output=output, activation=activation, dropout=0.1)
    x = np.random.default_rng(0).random((2, SIZE, SIZE, channels), dtype=np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, SIZE, SIZE, num_classes)
    assert ((y >= 0) & (y <= 1)).all()
    if output == "softmax":
        np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    else:
        assert np.abs(y.sum(-1) - 1.0).max() > 0.1  # independent probabilities


def test_skips_are_the_last_layer_of_each_resolution_and_the_centre_channel_feeds_rgb():
    model = b0(channels=5)
    encoder = model.get_layer("encoder")
    assert [tuple(t.shape[1:3]) for t in encoder.outputs] == [(SIZE // s,) * 2 for s in (2, 4, 8, 16, 32)]
    names = [t._keras_history[0].name for t in encoder.outputs]
    assert names == ["block2a_expand_activation", "block3a_expand_activation", "block4a_expand_activation",
                     "block6a_expand_activation", "top_activation"]
    # The 1x1 convolution in front starts as the centre slice copied to R, G and B; with random weights the
    # encoder's normalisation is the identity on [0, 1] (its Rescaling(1 / 255) and Normalization are cut off).
    assert not any(isinstance(layer, (keras.layers.Normalization, keras.layers.Rescaling))
                   for layer in encoder.layers)
    front = keras.Model(model.input, model.get_layer("encoder_normalization").output)
    x = np.random.default_rng(2).random((1, SIZE, SIZE, 5), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(front(x)), np.repeat(x[..., 2:3], 3, axis=-1), rtol=1e-6)


def test_a_second_variant_builds():
    model = networks.build_model("efficientnet_b1_unet", input_size=SIZE, base_filters=4)
    assert model.name == "efficientnet_b1_unet"
    assert model.get_layer("encoder").get_layer("block1b_project_conv")  # B1 has two block1 blocks, B0 one
    assert model.output_shape == (None, SIZE, SIZE, 2)


BAD_ARGS = [
    (dict(input_size=48), "multiple of 32 .*got 48"),
    (dict(input_size=80), "multiple of 32 .*got 80"),
    (dict(depth=3), "depth must be 4"),
    (dict(num_classes=1), "at least 2"),
    (dict(channels=0), "channels must be at least 1"),
    (dict(activation="tanh"), "activation"),
    (dict(output="linear"), "output must be one of"),
    (dict(encoder_weights=3), "encoder_weights must be None or the path"),
]


@pytest.mark.parametrize("kwargs,message", BAD_ARGS)
def test_bad_arguments_raise_precise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        b0(**kwargs)


def with_input_statistics(encoder, mean, variance):
    norm = next(layer for layer in encoder.layers if isinstance(layer, keras.layers.Normalization))
    count = norm.get_weights()[2]
    norm.set_weights([np.array(mean, np.float32), np.array(variance, np.float32), count])
    return encoder


def input_normalisation(model, value=0.5):
    x = np.full((1, 1, 1, 3), value, np.float32)
    return np.asarray(model.get_layer("encoder_normalization")(x)).ravel()


def test_local_legacy_h5_weights_load_into_the_encoder(tmp_path):
    source = with_input_statistics(bare_encoder(0, seed=7), (0.1, 0.2, 0.3), (4.0, 4.0, 4.0))
    path = tmp_path / "efficientnetb0_notop.h5"
    write_legacy_weights(source, path)
    model = b0(encoder_weights=str(path))
    encoder = model.get_layer("encoder")
    for name in ("stem_conv", "block3b_dwconv", "block6a_se_reduce", "top_bn"):
        for got, saved in zip(encoder.get_layer(name).get_weights(), source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(got, saved)
    # Statistics that are not the ImageNet ones are used as the encoder's Normalization would use them.
    np.testing.assert_allclose(input_normalisation(model), (0.5 - np.array([0.1, 0.2, 0.3])) / 2.0, rtol=1e-6)
    random = b0()
    assert not np.array_equal(random.get_layer("encoder").get_layer("stem_conv").get_weights()[0],
                              source.get_layer("stem_conv").get_weights()[0])


def test_imagenet_normalisation_matches_keras_applications(tmp_path):
    # The Keras ImageNet files store the standard deviations as the Normalization variance; keras.applications
    # then divides by their square root once more, so the input becomes (x - mean) / std. Ours must too.
    source = with_input_statistics(bare_encoder(0, seed=3), IMAGENET_MEAN_RGB, encoders.IMAGENET_STDDEV_RGB)
    path = tmp_path / "efficientnetb0_notop.h5"
    write_legacy_weights(source, path)
    model = b0(encoder_weights=path)
    expected = (0.5 - np.array(IMAGENET_MEAN_RGB)) / np.array(encoders.IMAGENET_STDDEV_RGB)
    np.testing.assert_allclose(input_normalisation(model), expected, rtol=1e-5)


def one_sentence(message):
    return message.count(". ") == 0 and message.endswith(".") and "\n" not in message


def test_weights_of_another_variant_are_refused_in_one_sentence(tmp_path):
    path = tmp_path / "efficientnetb1_notop.h5"
    write_legacy_weights(bare_encoder(1, seed=0), path)
    with pytest.raises(IvdsegError) as info:
        b0(encoder_weights=path)
    message = str(info.value)
    assert str(path) in message and "EfficientNetB0" in message and "efficientnetb0_notop.h5" in message
    assert one_sentence(message), message


def test_a_file_that_is_not_weights_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "efficientnetb0_notop.h5"
    path.write_bytes(b"not an HDF5 file")
    with pytest.raises(IvdsegError, match="does not fit EfficientNetB0") as info:
        b0(encoder_weights=path)
    assert one_sentence(str(info.value)), str(info.value)


def test_a_missing_file_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "nowhere" / "efficientnetb0_notop.h5"
    with pytest.raises(IvdsegError, match="does not exist") as info:
        b0(encoder_weights=str(path))
    assert str(path) in str(info.value) and one_sentence(str(info.value)), str(info.value)


@pytest.mark.parametrize("name", [
    "https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
    "ftp://example.org/efficientnetb0_notop.h5",
    "www.example.org/efficientnetb0_notop.h5",
    "imagenet",
])
def test_urls_and_imagenet_are_refused_without_downloading(name):
    with pytest.raises(IvdsegError, match="nothing is downloaded") as info:
        b0(encoder_weights=name)
    assert one_sentence(str(info.value)), str(info.value)


@pytest.fixture(scope="module")
def trained_looking_b0():
    """A B0 U-Net whose batch-norm statistics moved away from their initial values, as after training."""
    keras.utils.set_random_seed(5)
    model = b0(num_classes=3, activation="mish")
    for variable in model.non_trainable_variables:
        if "moving" in variable.path:
            variable.assign(np.random.default_rng(0).uniform(0.5, 1.5, variable.shape).astype(np.float32))
    return model


def test_saved_model_reloads_in_safe_mode_with_same_output(tmp_path, trained_looking_b0):
    path = tmp_path / "m.keras"
    trained_looking_b0.save(path)
    again = keras.saving.load_model(str(path), safe_mode=True, compile=False)
    also = load_keras_model(path)
    x = np.random.default_rng(1).random((2, SIZE, SIZE, 1), dtype=np.float32)
    expected = np.asarray(trained_looking_b0(x, training=False))
    np.testing.assert_allclose(np.asarray(again(x, training=False)), expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(also(x, training=False)), expected, atol=1e-6)


def test_onnx_export_agrees_with_keras(tmp_path, trained_looking_b0):
    pytest.importorskip("tf2onnx", reason="tf2onnx is not installed: the ONNX export of B0 was NOT tested")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: the ONNX export of B0 was NOT tested")
    from ivdseg.models.onnx_export import export_onnx

    path = export_onnx(trained_looking_b0, tmp_path / "b0.onnx")  # raises if ONNX Runtime and Keras disagree
    assert path.stat().st_size > 1_000_000
