"""Overlapping classes (one bit per class, sigmoid outputs) and neighbouring-slice context (2.5D), below the CLI:
the encodings, the loss on known values, the training targets, the decisions at inference and the files written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ivdseg.data.labels import bits_from_masks, class_masks, labelmap_by_priority
from ivdseg.data.preprocess import with_context
from ivdseg.inference.postprocess import apply_card
from ivdseg.inference.predict import prepare_slices, probabilities_to_labels, scaled_predict
from ivdseg.io.geometry import Volume, stack_volume

CLASSES = [{"value": 1, "name": "stomach", "color": [1.0, 0.0, 0.0]},
           {"value": 2, "name": "small bowel", "color": [1.0, 1.0, 0.0]},
           {"value": 3, "name": "large bowel", "color": [0.0, 0.8, 0.0]}]


def _overlapping_masks(shape=(4, 20, 24)):
    """Three classes on a stack: stomach and small bowel share a square, large bowel stands apart."""
    masks = np.zeros((*shape, 3), bool)
    masks[1:3, 2:10, 2:10, 0] = True
    masks[1:3, 6:14, 6:14, 1] = True
    masks[0:2, 15:18, 16:22, 2] = True
    return masks


def test_bits_round_trip_and_priority():
    masks = _overlapping_masks()
    bits = bits_from_masks(masks)
    assert bits[1, 7, 7] == 0b011 and bits[0, 16, 17] == 0b100 and bits[0, 0, 0] == 0
    decoded = class_masks(bits, 4, overlapping=True)
    assert np.array_equal(decoded[..., 1:], masks)
    assert np.array_equal(decoded[..., 0], ~masks.any(-1))
    # where stomach and small bowel meet, the first class of the priority wins
    assert labelmap_by_priority(bits, 4, [2, 1])[1, 7, 7] == 2
    assert labelmap_by_priority(bits, 4, [1])[1, 7, 7] == 1
    assert labelmap_by_priority(bits, 4, [])[0, 16, 17] == 3


def test_context_channels_come_from_neighbours_and_repeat_at_the_edges():
    stack = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 2, 3), np.float32)
    out = with_context(stack, 1)
    assert out.shape == (4, 2, 3, 3)
    assert out[0, 0, 0].tolist() == [0, 0, 1]  # the first slice repeats itself below
    assert out[2, 0, 0].tolist() == [1, 2, 3]
    assert out[3, 0, 0].tolist() == [2, 3, 3]
    assert with_context(stack, 0).shape == (4, 2, 3, 1)
    with pytest.raises(ValueError):
        with_context(stack, -1)


def test_prepare_slices_gives_the_card_its_channels_and_tta_keeps_them():
    stack = np.random.default_rng(0).random((5, 40, 30)).astype(np.float32)
    card = {"input_size": 32, "normalization": {"method": "percentile", "percentiles": [0.5, 99.5]},
            "preprocessing": {"resize": "pad"}, "context_slices": 2}
    x = prepare_slices(stack, card)
    assert x.shape == (5, 32, 32, 5)
    assert np.array_equal(x[2, ..., 2], x[1, ..., 3])  # slice 2 is slice 1's upper neighbour
    seen = []

    def predict(batch):
        seen.append(batch.shape)
        return np.stack([batch[..., 2], 1 - batch[..., 2]], axis=-1)

    prob = scaled_predict(predict, (0.9, 1.0, 1.1))(x)
    assert prob.shape == (5, 32, 32, 2) and all(s[-1] == 5 for s in seen)


def test_overlapping_probabilities_become_bits_and_binary_entropy():
    prob = np.zeros((1, 8, 8, 4), np.float32)
    prob[..., 0] = 0.9
    prob[0, 2:5, 2:5, 1] = 0.8
    prob[0, 3:6, 3:6, 2] = 0.7
    prob[0, 7, 7, 3] = 0.5  # not above 0.5: absent
    labels, entropy = probabilities_to_labels(prob, (8, 8), entropy=True, overlapping=True)
    assert labels[0, 3, 3] == 0b011 and labels[0, 2, 2] == 0b001 and labels[0, 5, 5] == 0b010
    assert labels[0, 7, 7] == 0
    assert entropy.shape == (1, 8, 8) and 0.0 <= float(entropy.min()) and float(entropy.max()) <= 1.0
    assert float(entropy[0, 0, 0]) < float(entropy[0, 7, 7])  # 0.5 is the least certain
    # exclusive decoding of the same probabilities is the argmax: one class per pixel
    assert set(np.unique(probabilities_to_labels(prob, (8, 8)))) <= {0, 1, 2, 3}


def test_post_processing_cleans_each_overlapping_class_on_its_own():
    masks = _overlapping_masks((3, 30, 30))
    masks[0, 28, 28, 1] = True  # a speck of small bowel far from its body
    bits = bits_from_masks(masks)
    card = {"overlapping": True, "classes": CLASSES,
            "postprocessing": {"enabled": True, "min_component_fraction": 0.1}}
    cleaned = apply_card(bits, card)
    assert cleaned[0, 28, 28] == 0
    expected = masks[..., 1].copy()
    expected[0, 28, 28] = False
    assert np.array_equal(class_masks(cleaned, 4, True)[..., 2], expected)
    assert np.array_equal(cleaned[..., :27, :], bits[..., :27, :])  # the overlap itself is untouched


def test_dice_bce_loss_matches_numpy_and_leaves_unknown_channels_out():
    keras = pytest.importorskip("keras")
    from ivdseg.nn.losses import DiceBinaryCrossEntropyLoss, get_loss

    rng = np.random.default_rng(1)
    truth = (rng.random((2, 6, 6, 3)) > 0.5).astype(np.float32)
    prob = rng.uniform(0.05, 0.95, (2, 6, 6, 3)).astype(np.float32)
    loss = DiceBinaryCrossEntropyLoss()
    got = np.asarray(loss.call(keras.ops.convert_to_tensor(truth), keras.ops.convert_to_tensor(prob)))
    dice = (2 * (truth * prob).sum((0, 1, 2)) + 1e-5) / (truth.sum((0, 1, 2)) + prob.sum((0, 1, 2)) + 1e-5)
    bce = -(truth * np.log(prob) + (1 - truth) * np.log(1 - prob)).mean((1, 2, 3))
    assert np.allclose(got, 1 - dice[1:].mean() + bce, atol=1e-5)
    # channel 2 unknown in the second sample: its values must not matter
    masked = truth.copy()
    masked[1, ..., 2] = -1
    other = prob.copy()
    other[1, ..., 2] = 1 - other[1, ..., 2]
    a = np.asarray(loss.call(keras.ops.convert_to_tensor(masked), keras.ops.convert_to_tensor(prob)))
    b = np.asarray(loss.call(keras.ops.convert_to_tensor(masked), keras.ops.convert_to_tensor(other)))
    assert np.allclose(a, b)
    assert isinstance(get_loss("dice_ce", overlapping=True), DiceBinaryCrossEntropyLoss)


def test_training_targets_are_multi_hot_from_bits():
    pytest.importorskip("tensorflow")
    from ivdseg.nn.augment import make_dataset

    masks = _overlapping_masks((4, 16, 16))
    bits = bits_from_masks(masks)
    images = np.random.default_rng(2).random((4, 16, 16, 3)).astype(np.float32)
    data = make_dataset(images, bits, 4, batch_size=4, augment=False, shuffle=False, overlapping=True)
    x, y = next(iter(data))
    assert x.shape == (4, 16, 16, 3)
    assert np.array_equal(np.asarray(y)[..., 1:], masks.astype(np.float32))
    assert np.array_equal(np.asarray(y)[..., 0], (~masks.any(-1)).astype(np.float32))
    # augmented, the channels and the label stay aligned in shape
    x2, y2 = next(iter(make_dataset(images, bits, 4, batch_size=4, augment=True, overlapping=True)))
    assert x2.shape == (4, 16, 16, 3) and y2.shape == (4, 16, 16, 4)


def test_validation_dice_thresholds_each_overlapping_class():
    pytest.importorskip("keras")
    from ivdseg.nn.train_data import validation_dice

    masks = _overlapping_masks((2, 20, 24))
    bits = bits_from_masks(masks)
    prob = np.concatenate([(~masks.any(-1))[..., None], masks], axis=-1).astype(np.float32) * 0.9
    dice = validation_dice(prob, bits, np.ones((2, 4), bool), overlapping=True)
    assert np.allclose(dice[1:], 1.0)
    prob[..., 2] = 0.0  # small bowel never predicted
    dice = validation_dice(prob, bits, np.ones((2, 4), bool), overlapping=True)
    assert dice[2] == 0.0 and dice[1] == 1.0


def test_seg_nrrd_keeps_overlapping_segments_in_layers(tmp_path):
    slicerio = pytest.importorskip("slicerio")
    from ivdseg.io.segnrrd import write_seg_nrrd

    masks = _overlapping_masks()
    labelmap = stack_volume(bits_from_masks(masks), (1.5, 1.5), 3.0)
    path = write_seg_nrrd(labelmap, CLASSES, tmp_path / "gi.seg.nrrd", overlapping=True, algorithm_name="test 1")
    seg = slicerio.read_segmentation(str(path))
    assert seg["voxels"].ndim == 4 and seg["voxels"].shape[0] == 2  # stomach and small bowel overlap: two layers
    for k, cls in enumerate(CLASSES):
        segment = slicerio.segment_from_name(seg, cls["name"])
        got = slicerio.extract_segments(seg, [(cls["name"], 1)])["voxels"] == 1
        assert np.array_equal(got.transpose(2, 1, 0), masks[..., k]), cls["name"]
        assert segment["layer"] in (0, 1)


def test_labelmap_output_follows_the_priority_and_says_so(tmp_path):
    from ivdseg.inference.segment import SegmentResult, class_volumes_ml, write_result

    masks = _overlapping_masks()
    labelmap = stack_volume(bits_from_masks(masks), (1.0, 1.0), 1.0)
    volumes = class_volumes_ml(labelmap, CLASSES, overlapping=True)
    assert volumes["stomach"] == pytest.approx(masks[..., 0].sum() / 1000.0)
    result = SegmentResult(labelmap, CLASSES, 4, 0.1, "cpu", volumes, overlapping=True)
    card = {"name": "gi", "version": "1", "label_priority": [2, 1, 3]}
    path = write_result(result, tmp_path / "gi.nrrd", card)
    from ivdseg.io.volumes import read_volume

    written = read_volume(path)
    assert isinstance(written, Volume)
    sidecar = json.loads((tmp_path / "gi.nrrd.json").read_text())
    assert sidecar["overlapping"] is True and sidecar["label_priority"] == [2, 1, 3]
    assert sidecar["volumes_ml"] == volumes  # each class's whole volume, overlaps included
    assert np.rint(written.array[1, 7, 7]) == 2  # the overlap holds small bowel, first in the priority
