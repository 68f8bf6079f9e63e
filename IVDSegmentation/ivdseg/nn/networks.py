"""2D segmentation networks, each a function returning a channels-last ``keras.Model``.

Every network maps images of shape (B, H, W, C) to per-pixel class probabilities of shape
(B, H, W, num_classes): softmax over background + classes (channel 0 is background) for exclusive classes, or
``output="sigmoid"``, one independent probability per channel, for classes that may overlap.
H and W must be divisible by ``2 ** depth`` (16 for DeepLabV3+).

Import this module only where Keras is wanted: importing it imports Keras and registers the
custom objects (``ivdseg>mish``) that ``keras.saving.load_model(..., safe_mode=True)`` needs.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from ivdseg.nn.encoders import EFFICIENTNET_UNETS  # imports no networks at its top: no cycle

ACTIVATIONS = ("relu", "swish", "mish", "leaky_relu")


@keras.saving.register_keras_serializable(package="ivdseg", name="mish")
def mish(x):
    """Mish activation, x * tanh(softplus(x)) (Misra 2019)."""
    return x * ops.tanh(ops.softplus(x))


def _activation(name: str):
    if name == "mish":
        return mish
    if name in ("relu", "swish"):
        return name
    if name == "leaky_relu":
        return keras.activations.leaky_relu
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def _check_size(input_size: int, factor: int, network: str) -> None:
    if input_size < factor or input_size % factor:
        raise ValueError(
            f"{network}: input_size must be a positive multiple of {factor} for its depth, got {input_size}"
        )


def _conv_bn_act(x, filters, activation, name, kernel_size=3, dilation_rate=1, strides=1):
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", dilation_rate=dilation_rate,
        use_bias=False, kernel_initializer="he_normal", name=f"{name}_conv",
    )(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation(_activation(activation), name=f"{name}_act")(x)


OUTPUTS = ("softmax", "sigmoid")


def _head(x, num_classes, output="softmax"):
    """Per-pixel probabilities: "softmax" for exclusive classes (they sum to 1), "sigmoid" for classes that may
    overlap (each channel on its own, channel 0 = no class). float32 keeps both stable under mixed precision."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    return layers.Conv2D(num_classes, 1, activation=output, dtype="float32", name="head")(x)


def _inputs(input_size, channels):
    return keras.Input((input_size, input_size, channels), name="image")


# ---------------------------------------------------------------- U-Net
def _double_conv(x, filters, activation, name):
    x = _conv_bn_act(x, filters, activation, f"{name}_a")
    return _conv_bn_act(x, filters, activation, f"{name}_b")


def _encoder_decoder(inputs, block, depth, base_filters, dropout, side=None):
    """Shared U shape: ``block(x, filters, name)`` is the per-stage block. ``side``, when given, is a tensor at the
    input's resolution that is max-pooled to every deeper stage's resolution and concatenated to its input."""
    skips = []
    x = inputs
    for i in range(depth):
        x = block(x, base_filters * 2**i, f"encoder_stage{i}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"encoder_stage{i}_pool")(x)
        if side is not None:
            side = layers.MaxPooling2D(2, name=f"side_stage{i + 1}_pool")(side)
            x = layers.Concatenate(name=f"side_stage{i + 1}_concat")([x, side])
    x = block(x, base_filters * 2**depth, "bottleneck")
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for i in reversed(range(depth)):
        x = layers.Conv2DTranspose(
            base_filters * 2**i, 2, strides=2, padding="same", name=f"decoder_stage{i}_up"
        )(x)
        x = layers.Concatenate(name=f"decoder_stage{i}_concat")([x, skips[i]])
        x = block(x, base_filters * 2**i, f"decoder_stage{i}")
    return x


def build_unet2d(input_size=256, num_classes=2, channels=1, activation="relu", depth=4,
                 base_filters=16, dropout=0.0, output="softmax") -> keras.Model:
    """U-Net (Ronneberger et al. 2015) with batch normalisation.

    Args:
        input_size: H = W of the input, a multiple of ``2 ** depth``.
        num_classes: output channels including background.
        channels: input channels (1 for MRI).
        activation: "relu", "swish" or "mish".
        depth: number of 2x downsamplings.
        base_filters: filters of the first stage, doubled at each stage.
        dropout: dropout rate at the bottleneck (0 = none).
        output: "softmax" (exclusive classes) or "sigmoid" (overlapping classes, one probability each).

    Returns:
        keras.Model mapping (B, H, W, channels) to (B, H, W, num_classes) probabilities.

    Raises:
        ValueError: on a size that the depth cannot halve, an unknown activation, or num_classes < 2.
    """
    _check_args(input_size, num_classes, depth, "unet2d")
    inputs = _inputs(input_size, channels)
    x = _encoder_decoder(
        inputs, lambda t, f, n: _double_conv(t, f, activation, n), depth, base_filters, dropout
    )
    return keras.Model(inputs, _head(x, num_classes, output), name="unet2d")


# ---------------------------------------------------------------- Res-SE-U-Net
def _squeeze_excite(x, filters, activation, name, ratio=8):
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
    s = layers.Dense(max(filters // ratio, 4), activation=_activation(activation), name=f"{name}_se_reduce")(s)
    s = layers.Dense(filters, activation="sigmoid", name=f"{name}_se_expand")(s)
    return layers.Multiply(name=f"{name}_se_scale")([x, s])


def _res_se_block(x, filters, activation, name):
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = _conv_bn_act(x, filters, activation, f"{name}_a")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal",
                      name=f"{name}_b_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_b_bn")(y)
    y = _squeeze_excite(y, filters, activation, name)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation(_activation(activation), name=f"{name}_out")(y)


def build_res_se_unet(input_size=256, num_classes=2, channels=1, activation="relu", depth=4,
                      base_filters=16, dropout=0.0, output="softmax") -> keras.Model:
    """U-Net whose stages are residual blocks with squeeze-and-excitation (Hu et al. 2018).

    Same arguments, shapes and errors as :func:`build_unet2d`.
    """
    _check_args(input_size, num_classes, depth, "res_se_unet")
    inputs = _inputs(input_size, channels)
    x = _encoder_decoder(
        inputs, lambda t, f, n: _res_se_block(t, f, activation, n), depth, base_filters, dropout
    )
    return keras.Model(inputs, _head(x, num_classes, output), name="res_se_unet")


# ---------------------------------------------------------------- DeepLabV3+
def _aspp(x, filters, activation, rates):
    size = x.shape[1:3]
    branches = [_conv_bn_act(x, filters, activation, "aspp_1x1", kernel_size=1)]
    for rate in rates:
        branches.append(_conv_bn_act(x, filters, activation, f"aspp_rate{rate}", dilation_rate=rate))
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool")(x)
    pooled = _conv_bn_act(pooled, filters, activation, "aspp_pool_proj", kernel_size=1)
    pooled = layers.UpSampling2D(size=tuple(size), interpolation="bilinear", name="aspp_pool_up")(pooled)
    branches.append(pooled)
    y = layers.Concatenate(name="aspp_concat")(branches)
    return _conv_bn_act(y, filters, activation, "aspp_proj", kernel_size=1)


def build_deeplabv3plus(input_size=256, num_classes=2, channels=1, activation="relu", depth=4,
                        base_filters=16, dropout=0.1, atrous_rates=(2, 4, 6), output="softmax") -> keras.Model:
    """DeepLabV3+ (Chen et al. 2018) on a residual encoder trained from scratch (no downloaded weights).

    The encoder reaches output stride 16 with ``depth`` = 4 stride-2 stages, then a dilated stage;
    atrous spatial pyramid pooling (ASPP) with ``atrous_rates`` (smaller than the paper's 6/12/18,
    which suit 512 px inputs) and the stride-4 low-level skip of the paper's decoder.

    Args:
        input_size: H = W, a multiple of 16. Other arguments as :func:`build_unet2d`.
        atrous_rates: dilation rates of the ASPP's 3x3 branches.

    Returns:
        keras.Model, (B, H, W, channels) -> (B, H, W, num_classes) probabilities (``output`` as the U-Net's).
    """
    if depth != 4:
        raise ValueError(f"deeplabv3plus: depth must be 4 (output stride 16), got {depth}")
    _check_args(input_size, num_classes, depth, "deeplabv3plus")
    inputs = _inputs(input_size, channels)
    x = _conv_bn_act(inputs, base_filters, activation, "stem", strides=2)  # stride 2
    low_level = None
    for i in range(1, depth):  # strides 4, 8, 16
        x = _conv_bn_act(x, base_filters * 2**i, activation, f"encoder_stage{i}_down", strides=2)
        x = _res_se_block(x, base_filters * 2**i, activation, f"encoder_stage{i}")
        if i == 1:
            low_level = x
    x = _dilated_stage(x, base_filters * 2**depth, activation)
    x = _aspp(x, base_filters * 8, activation, atrous_rates)
    if dropout:
        x = layers.Dropout(dropout, name="aspp_dropout")(x)
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_up4")(x)
    low = _conv_bn_act(low_level, max(base_filters * 3, 16), activation, "decoder_low_proj", kernel_size=1)
    x = layers.Concatenate(name="decoder_concat")([x, low])
    x = _conv_bn_act(x, base_filters * 8, activation, "decoder_conv_a")
    x = _conv_bn_act(x, base_filters * 8, activation, "decoder_conv_b")
    x = layers.UpSampling2D(4, interpolation="bilinear", name="decoder_up_final")(x)
    return keras.Model(inputs, _head(x, num_classes, output), name="deeplabv3plus")


def _dilated_stage(x, filters, activation):
    x = _conv_bn_act(x, filters, activation, "encoder_dilated_a", dilation_rate=2)
    return _conv_bn_act(x, filters, activation, "encoder_dilated_b", dilation_rate=2)


def _check_args(input_size, num_classes, depth, network):
    if depth < 1:
        raise ValueError(f"{network}: depth must be at least 1, got {depth}")
    if num_classes < 2:
        raise ValueError(f"{network}: num_classes counts background too and must be at least 2, got {num_classes}")
    _check_size(input_size, 2**depth, network)


NETWORKS = {
    "unet2d": build_unet2d,
    "deeplabv3plus": build_deeplabv3plus,
    "res_se_unet": build_res_se_unet,
    **EFFICIENTNET_UNETS,  # efficientnet_b0_unet ... efficientnet_b7_unet, on keras.applications encoders
}


# ---------------------------------------------------------------- keypoints (interactive correction)
def build_keypoint_unet(input_size=256, num_keypoints=5, channels=1, activation="leaky_relu", depth=4,
                        base_filters=16, dropout=0.0, hints=True, hints_every_scale=False) -> keras.Model:
    """Hint-conditioned keypoint U-Net: the image plus one hint channel per keypoint in, one heatmap per keypoint out.

    A hint channel holds a Gaussian at the point the user fixed and zeros otherwise
    (:func:`ivdseg.inference.keypoints.hint_channels`); the network learns to move the other points to fit it.

    Args:
        input_size: H = W, or (H, W) (a tall X-ray keeps its shape); each a multiple of ``2 ** depth``.
        num_keypoints: K, the heatmaps out (and the hint channels in, with ``hints``).
        channels: image channels.
        activation: leaky ReLU by default (what the seed design settled on), or any of :data:`ACTIVATIONS`.
        hints: add the K hint channels to the input.
        hints_every_scale: also feed the input (image and hints), max-pooled, to every deeper stage: a hint then
            reaches the coarse stages, whose receptive field spans the whole spine, directly, rather than only
            through the convolutions of the first stages (as Kim et al. 2022 bring hints into intermediate features).

    Returns:
        keras.Model (B, H, W, channels + K) -> (B, H, W, K), sigmoid heatmaps (float32).
    """
    if num_keypoints < 1:
        raise ValueError(f"keypoint_unet: num_keypoints must be at least 1, got {num_keypoints}")
    if depth < 1:
        raise ValueError(f"keypoint_unet: depth must be at least 1, got {depth}")
    h, w = (input_size, input_size) if isinstance(input_size, int) else (int(v) for v in input_size)
    for side in (h, w):
        _check_size(side, 2**depth, "keypoint_unet")
    inputs = keras.Input((h, w, channels + (num_keypoints if hints else 0)), name="image")
    x = _encoder_decoder(
        inputs, lambda t, f, n: _double_conv(t, f, activation, n), depth, base_filters, dropout,
        side=inputs if hints and hints_every_scale else None,
    )
    # A heatmap is almost all background: starting its logits at -4 (sigmoid 0.018) spares the first epochs the
    # climb down from 0.5 everywhere (the prior initialisation of focal-loss detectors).
    heatmaps = layers.Conv2D(num_keypoints, 1, activation="sigmoid", dtype="float32", name="heatmaps",
                             bias_initializer=keras.initializers.Constant(-4.0))(x)
    return keras.Model(inputs, heatmaps, name="keypoint_unet")


KEYPOINT_NETWORKS = {"keypoint_unet": build_keypoint_unet}


def build_model(network: str, **kwargs) -> keras.Model:
    """Builds a registered network by name; ``kwargs`` go to its builder.

    Raises:
        ValueError: for a name not in :data:`NETWORKS`.
    """
    try:
        builder = NETWORKS[network]
    except KeyError:
        raise ValueError(f"network must be one of {sorted(NETWORKS)}, got {network!r}") from None
    return builder(**kwargs)
