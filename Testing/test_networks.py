"""Networks: shapes for every registered network and size, activations, argument checks, safe round trip."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from ivdseg.nn import networks  # noqa: E402
from ivdseg.models.package import load_keras_model  # noqa: E402

SHAPE_CASES = [
    # network, input_size, num_classes, activation, depth
    ("unet2d", 64, 2, "relu", 4),
    ("unet2d", 96, 3, "swish", 3),   # not a power of two
    ("unet2d", 48, 2, "mish", 4),    # odd multiple of 16
    ("res_se_unet", 80, 2, "mish", 4),
    ("res_se_unet", 64, 4, "relu", 2),
    ("deeplabv3plus", 64, 2, "swish", 4),
    ("deeplabv3plus", 112, 3, "relu", 4),
]


@pytest.mark.parametrize("network,size,num_classes,activation,depth", SHAPE_CASES)
def test_output_shape_and_softmax(network, size, num_classes, activation, depth):
    model = networks.build_model(network, input_size=size, num_classes=num_classes, activation=activation,
                                 depth=depth, base_filters=4)
    x = np.random.default_rng(0).random((2, size, size, 1), dtype=np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, size, size, num_classes)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    assert (y >= 0).all()


BAD_ARGS = [
    ("unet2d", dict(input_size=100, depth=4), "multiple of 16"),
    ("unet2d", dict(input_size=64, num_classes=1), "at least 2"),
    ("unet2d", dict(input_size=64, activation="tanh"), "activation"),
    ("deeplabv3plus", dict(input_size=64, depth=3), "depth must be 4"),
    ("res_se_unet", dict(input_size=64, depth=0), "depth must be at least 1"),
]


@pytest.mark.parametrize("network,kwargs,message", BAD_ARGS)
def test_bad_arguments_raise_precise_value_error(network, kwargs, message):
    with pytest.raises(ValueError, match=message):
        networks.build_model(network, base_filters=4, **kwargs)


def test_unknown_network():
    with pytest.raises(ValueError, match="network must be one of"):
        networks.build_model("vnet3d", input_size=64)


def test_mish_known_values():
    x = np.array([-2.0, 0.0, 1.0, 3.0], np.float32)
    expected = x * np.tanh(np.log1p(np.exp(x)))
    np.testing.assert_allclose(np.asarray(networks.mish(x)), expected, rtol=1e-6)


def test_layers_are_named_by_stage():
    model = networks.build_unet2d(input_size=32, depth=2, base_filters=4)
    names = {layer.name for layer in model.layers}
    assert {"encoder_stage0_a_conv", "decoder_stage1_up", "bottleneck_b_conv", "head"} <= names


# The EfficientNet U-Nets take depth 4 only and are slow to build: test_encoders.py reloads B0 the same way.
@pytest.mark.parametrize("network", [n for n in sorted(networks.NETWORKS) if not n.startswith("efficientnet_")])
def test_saved_model_reloads_in_safe_mode_with_same_output(tmp_path, network):
    model = networks.build_model(network, input_size=32 if network != "deeplabv3plus" else 64,
                                 activation="mish", base_filters=4, depth=4 if network == "deeplabv3plus" else 2)
    path = tmp_path / "m.keras"
    model.save(path)
    again = load_keras_model(path)
    x = np.random.default_rng(1).random((1, *model.input_shape[1:]), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), atol=1e-6)


def test_the_command_line_offers_every_registered_network():
    from ivdseg.cli import NETWORK_NAMES

    assert sorted(NETWORK_NAMES) == sorted(networks.NETWORKS)
