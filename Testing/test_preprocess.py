"""Slices to square network inputs and back: stretching, or padding to a square first (the aspect ratio kept), with
inference undoing exactly what the training data had."""

from __future__ import annotations

import numpy as np
import pytest

from ivdseg.data.preprocess import pad_widths, resize_probabilities, resize_stack
from ivdseg.inference.predict import prepare_slices, probabilities_to_labels, resize_mode

CARD = {"input_size": 64, "normalization": {"method": "percentile", "percentiles": [0.5, 99.5]}}


@pytest.mark.parametrize("shape, widths", [((10, 6), ((0, 0), (2, 2))), ((5, 8), ((1, 2), (0, 0))),
                                           ((7, 7), ((0, 0), (0, 0)))])
def test_pad_widths_centre_the_slice_in_a_square(shape, widths):
    assert pad_widths(shape) == widths


def test_padding_keeps_a_square_square_and_stretching_does_not():
    label = np.zeros((1, 40, 80), np.uint8)
    label[0, 10:30, 30:50] = 1  # 20 x 20 pixels
    padded = resize_stack(label, 64, is_label=True, mode="pad")[0]
    stretched = resize_stack(label, 64, is_label=True, mode="stretch")[0]
    rows, cols = np.nonzero(padded)
    assert np.ptp(rows) == pytest.approx(np.ptp(cols), abs=1)
    rows, cols = np.nonzero(stretched)
    assert np.ptp(rows) == pytest.approx(2 * np.ptp(cols), abs=2)  # 40 rows -> 64, 80 columns -> 64


def test_pad_is_undone_exactly_on_the_way_back():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 32, 64)).astype(np.uint8)
    square = resize_stack(labels, 64, is_label=True, mode="pad")  # 64 x 64: the padded square, no scaling
    assert (square[:, :16] == 0).all() and (square[:, 48:] == 0).all()
    probabilities = np.eye(3, dtype=np.float32)[square]
    back = probabilities_to_labels(probabilities, (32, 64), mode="pad")
    np.testing.assert_array_equal(back, labels)
    assert resize_probabilities(probabilities[0], (32, 64), "pad").shape == (32, 64, 3)


def test_images_are_padded_with_their_darkest_value():
    image = np.full((1, 16, 32), 100.0, np.float32)
    image[0, 0, 0] = 20.0
    padded = resize_stack(image, 32, mode="pad")[0]
    assert padded[0, 5] == 20.0 and padded[31, 5] == 20.0 and padded[16, 16] == 100.0


def test_inference_follows_the_card():
    stack = np.zeros((1, 32, 64), np.float32)
    stack[0, 8:24, 24:40] = 1.0
    assert resize_mode(CARD) == "stretch"  # a card made before the option existed
    padded = prepare_slices(stack, {**CARD, "preprocessing": {"resize": "pad"}})[0, ..., 0]
    rows, cols = np.nonzero(padded > 0.5)
    assert np.ptp(rows) == np.ptp(cols) == 15 and rows.min() == 16 + 8
    with pytest.raises(ValueError, match="resize mode"):
        resize_stack(stack, 64, mode="crop")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
def test_network_input_is_float32_whatever_the_scanner_stored(dtype):
    """float64 percentile bounds once promoted every prepared slice to float64: twice the memory of a training set,
    and an input ONNX Runtime refuses."""
    from ivdseg.data.preprocess import normalize_slices

    stack = (np.random.default_rng(0).random((3, 40, 50)) * 1000).astype(dtype)
    normalised = normalize_slices(stack)
    assert normalised.dtype == np.float32 and 0.0 <= normalised.min() and normalised.max() <= 1.0
    assert prepare_slices(stack, CARD).dtype == np.float32
    assert prepare_slices(stack, {**CARD, "context_slices": 1, "channels": 3}).shape == (3, 64, 64, 3)
    assert prepare_slices(stack, {**CARD, "context_slices": 1, "channels": 3}).dtype == np.float32
