"""U-Nets on a ``keras.applications`` EfficientNet encoder (Tan & Le 2019), variants B0 ... B7.

Shapes: images (B, S, S, channels) in [0, 1] -> (B, S, S, num_classes) probabilities, S a multiple of 32.

- Input: a 1x1 convolution ``channels_to_rgb`` turns any channel count into the three the encoder (and its
  ImageNet weights) expects. It starts as a copy of the centre channel into R, G and B (the slice being
  segmented, its 2.5D neighbours weighted 0) and is trained with the rest: one code path for 1 channel (MRI)
  and 3 or 5 (2.5D), with or without ImageNet weights.
- Intensities: keras.applications' EfficientNet starts with ``Rescaling(1 / 255)`` and a ``Normalization`` for
  0..255 RGB. Our images are already in [0, 1], so the encoder is cut after those two layers and one per-channel
  ``Rescaling`` named ``encoder_normalization`` does what they would do to 255 times our input: identity with
  random weights, (x - ImageNet mean) / ImageNet std with ImageNet weights. Its constants are in the layer's
  config: the Normalization layer keeps its statistics as cached tensors that tf2onnx turns into missing inputs.
- Encoder: the keras.applications model (``include_top=False``, ``weights=None``: nothing is ever downloaded)
  after its input normalisation, nested as the layer ``encoder``; its features at strides 2, 4, 8 and 16 (the
  last layer of each resolution, found by shape) are the skips, its stride-32 output the bottleneck. It keeps
  its swish.
- Decoder: five stages, each a bilinear 2x upsampling, a concatenation with the skip of that stride (none at
  full resolution) and two conv-BN-``activation`` blocks with ``base_filters * 2**i`` filters at stride
  ``2**i`` (16 -> 256, 128, 64, 32, 16 filters). ``depth`` must be 4 (the four skips); ``depth`` and
  ``base_filters`` shape only the decoder.
- Weights: ``encoder_weights`` names a local ImageNet file of the same variant, the ``efficientnetb{k}_notop.h5``
  keras.applications would download, loaded by topology with ``load_weights``.

Only proper Keras layers: the model saves and loads with ``keras.saving.load_model(..., safe_mode=True)``.
Keras is imported only by the builder: ``ivdseg.nn.networks`` registers these builders and stays importable from
here without a cycle, and the module itself loads without TensorFlow.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ivdseg.errors import IvdsegError

if TYPE_CHECKING:
    import keras

VARIANTS = tuple(range(8))
SKIP_STRIDES = (2, 4, 8, 16)
OUTPUT_STRIDE = 32
DEPTH = len(SKIP_STRIDES)
# The standard deviations (RGB, intensities 0..1) that the Keras ImageNet files store as the variance of the
# encoder's Normalization layer; keras.applications divides by their square root again when it loads them itself
# (tensorflow/tensorflow#49930), so that the input ends up divided by the standard deviation.
IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^www\.", re.ASCII)


def build_efficientnet_unet(variant, input_size=256, num_classes=2, channels=1, activation="relu", depth=4,
                            base_filters=16, dropout=0.0, output="softmax", encoder_weights=None) -> keras.Model:
    """U-Net whose encoder is keras.applications' ``EfficientNetB{variant}``.

    Args:
        variant: 0 ... 7, the EfficientNet B variant.
        input_size: H = W of the input, a multiple of 32 (the encoder halves it five times).
        num_classes: output channels including background.
        channels: input channels, 1 (MRI) or more (2.5D: neighbouring slices, the centre one in the middle).
        activation: the decoder's activation ("relu", "swish", "mish" or "leaky_relu"); the encoder keeps swish.
        depth: must be 4, the skips at strides 2, 4, 8 and 16 (accepted for the common builder signature).
        base_filters: filters of the full-resolution decoder stage, doubled at each coarser one.
        dropout: dropout rate on the stride-32 features (0 = none).
        output: "softmax" (exclusive classes) or "sigmoid" (overlapping classes, one probability each).
        encoder_weights: None (random initialisation) or the path of a local ImageNet weights file of this
            variant without its top (``efficientnetb{variant}_notop.h5``). Never downloaded.

    Returns:
        keras.Model ``efficientnet_b{variant}_unet`` mapping (B, S, S, channels) to (B, S, S, num_classes).

    Raises:
        ValueError: on an argument out of range (the size, depth, classes, channels, activation or output).
        IvdsegError: when ``encoder_weights`` is a URL, is no file, or does not fit this variant.
    """
    import keras
    from keras import layers

    from ivdseg.nn.networks import OUTPUTS, _activation, _conv_bn_act, _head  # here: networks imports this module

    network = f"efficientnet_b{variant}_unet"
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if depth != DEPTH:
        raise ValueError(f"{network}: depth must be {DEPTH} (the encoder's skips at strides 2, 4, 8 and 16), "
                         f"got {depth}")
    if num_classes < 2:
        raise ValueError(f"{network}: num_classes counts background too and must be at least 2, got {num_classes}")
    if input_size < OUTPUT_STRIDE or input_size % OUTPUT_STRIDE:
        raise ValueError(f"{network}: input_size must be a positive multiple of {OUTPUT_STRIDE} (the EfficientNet "
                         f"encoder halves it five times), got {input_size}")
    if channels < 1:
        raise ValueError(f"{network}: channels must be at least 1, got {channels}")
    if base_filters < 1:
        raise ValueError(f"{network}: base_filters must be at least 1, got {base_filters}")
    _activation(activation)
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    weights_path = _weights_file(encoder_weights, variant)

    encoder = getattr(keras.applications, f"EfficientNetB{variant}")(
        include_top=False, weights=None, input_shape=(input_size, input_size, 3))
    if weights_path is not None:
        _load_encoder_weights(encoder, weights_path, variant)
    norm = next(layer for layer in encoder.layers if isinstance(layer, layers.Normalization))
    skip_names = _skip_layer_names(encoder, input_size)
    features = keras.Model(norm.output, [encoder.get_layer(n).output for n in skip_names] + [encoder.output],
                           name="encoder")

    inputs = keras.Input((input_size, input_size, channels), name="image")
    to_rgb = layers.Conv2D(3, 1, use_bias=False, name="channels_to_rgb")
    x = to_rgb(inputs)
    centre = np.zeros((1, 1, channels, 3), np.float32)
    centre[0, 0, channels // 2, :] = 1.0
    to_rgb.set_weights([centre])
    scale, offset = _input_normalization(norm, imagenet=weights_path is not None)
    x = layers.Rescaling(scale, offset, name="encoder_normalization")(x)
    *skips, x = features(x)
    if dropout:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for i in reversed(range(DEPTH + 1)):  # stage i ends at stride 2**i
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"decoder_stage{i}_up")(x)
        if i:
            x = layers.Concatenate(name=f"decoder_stage{i}_concat")([x, skips[i - 1]])
        x = _conv_bn_act(x, base_filters * 2**i, activation, f"decoder_stage{i}_a")
        x = _conv_bn_act(x, base_filters * 2**i, activation, f"decoder_stage{i}_b")
    return keras.Model(inputs, _head(x, num_classes, output), name=network)


def _skip_layer_names(encoder, input_size):
    """Names of the last encoder layer (in layer order) at each stride of SKIP_STRIDES.

    The last layer of a resolution is the expanded activation that the next stride-2 block downsamples
    (``block2a_expand_activation`` ... ``block6a_expand_activation`` in B0); found by shape, not by name.

    Raises:
        RuntimeError: when keras.applications' EfficientNet no longer has a feature at one of these strides.
    """
    stride_of_side = {input_size // s: s for s in SKIP_STRIDES}
    last = {}
    for layer in encoder.layers:
        shape = layer.output.shape
        if len(shape) == 4 and shape[1] == shape[2] and shape[1] in stride_of_side:
            last[stride_of_side[shape[1]]] = layer.name
    missing = [s for s in SKIP_STRIDES if s not in last]
    if missing or tuple(encoder.output.shape[1:3]) != (input_size // OUTPUT_STRIDE,) * 2:
        raise RuntimeError(f"{encoder.name}: no features at strides {missing} or output stride {OUTPUT_STRIDE} "
                           f"(output {encoder.output.shape}); keras.applications has changed")
    return [last[s] for s in SKIP_STRIDES]


def _weights_file(encoder_weights, variant) -> Path | None:
    """The local weights file to load, checked before the slow build; None for random initialisation."""
    if encoder_weights is None:
        return None
    expected = f"efficientnetb{variant}_notop.h5"
    if not isinstance(encoder_weights, (str, os.PathLike)):
        raise ValueError(f"encoder_weights must be None or the path of a file such as {expected}, "
                         f"got {type(encoder_weights).__name__}")
    text = os.fspath(encoder_weights)
    if _URL.match(text) or text.lower() == "imagenet":
        raise IvdsegError(f"Encoder weights {text!r} are not a local file and nothing is downloaded; fetch "
                          f"{expected} yourself and name its path.")
    path = Path(text).expanduser()
    if not path.is_file():
        raise IvdsegError(f"Encoder weights file {path} does not exist; name the {expected} file on this machine.")
    return path


def _load_encoder_weights(encoder, path: Path, variant) -> None:
    """Loads ``path`` into the keras.applications encoder, as keras.applications would with its own file."""
    expected = f"efficientnetb{variant}_notop.h5"
    try:
        encoder.load_weights(str(path))
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        reason = str(exc).split(". ")[0].splitlines()[0].strip().rstrip(".") if str(exc) else type(exc).__name__
        raise IvdsegError(f"Encoder weights file {path} does not fit EfficientNetB{variant} without its top "
                          f"({reason[:200]}); name that variant's {expected}.") from None


def _input_normalization(norm, imagenet):
    """Per-channel (scale, offset), lists of 3 floats, that map our [0, 1] RGB to what the encoder's
    ``Rescaling(1 / 255)`` and ``Normalization`` layer ``norm`` give for 0..255 RGB, plus, for ImageNet weights,
    the correction keras.applications applies when it loads them itself.

    Those files store the standard deviation as the variance, and keras.applications divides by its square root
    once more, which gives (x - mean) / std; a file whose variance is not that standard deviation is left as it is.
    """
    mean, variance = (np.asarray(w, np.float64) for w in norm.get_weights()[:2])
    import keras

    scale = 1.0 / np.maximum(np.sqrt(variance), keras.backend.epsilon())  # as Normalization.call
    if imagenet and np.allclose(variance, IMAGENET_STDDEV_RGB, atol=1e-4):
        scale = scale / np.sqrt(IMAGENET_STDDEV_RGB)
    return [float(v) for v in scale], [float(v) for v in -mean * scale]


def _registered(variant):
    def build(input_size=256, num_classes=2, channels=1, activation="relu", depth=4, base_filters=16,
              dropout=0.0, output="softmax", encoder_weights=None) -> keras.Model:
        return build_efficientnet_unet(variant, input_size=input_size, num_classes=num_classes, channels=channels,
                                       activation=activation, depth=depth, base_filters=base_filters,
                                       dropout=dropout, output=output, encoder_weights=encoder_weights)

    build.__name__ = build.__qualname__ = f"build_efficientnet_b{variant}_unet"
    build.__doc__ = (f"U-Net on an EfficientNetB{variant} encoder: :func:`build_efficientnet_unet` with "
                     f"``variant={variant}``.")
    return build


EFFICIENTNET_UNETS = {f"efficientnet_b{k}_unet": _registered(k) for k in VARIANTS}
