"""Left / right instances of a paired organ from patient coordinates, on the chest radiographs of cxr_lung."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import require_data

from ivdseg.inference.instances import radiograph_volume, split_left_right
from ivdseg.io.geometry import Volume


def _read(path):
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 127


def test_the_lungs_of_a_radiograph_get_the_sides_its_masks_say():
    folder = require_data("cxr_lung/chexmask_example")
    right, left = _read(folder / "RL_mask.png"), _read(folder / "LL_mask.png")
    image = cv2.imread(str(folder / "utils_example1.jpg"), cv2.IMREAD_GRAYSCALE)
    labels, sides, note = split_left_right((right | left)[None], radiograph_volume(image))
    assert [s.side for s in sides] == ["right", "left"] and note == ""
    # The patient's right lung is on the viewer's left: what the geometry says, not what the column order says.
    assert (labels[0][right] == 1).mean() > 0.99 and (labels[0][left] == 2).mean() > 0.99


def test_sides_follow_the_geometry_not_the_array_order():
    folder = require_data("cxr_lung/chexmask_example")
    right, left = _read(folder / "RL_mask.png"), _read(folder / "LL_mask.png")
    volume = radiograph_volume(np.zeros(right.shape))
    flipped = Volume(volume.array, volume.ijk_to_ras @ np.array(
        [[-1, 0, 0, right.shape[1] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float))  # columns stored mirrored
    labels, sides, _ = split_left_right((right | left)[None, :, ::-1], flipped)
    assert (labels[0][:, ::-1][right] == 1).mean() > 0.99  # still the patient's right lung


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_combined_two_lung_masks_split_into_right_and_left(n):
    mask = _read(require_data(f"cxr_lung/imlab_demo/{n}-mask.png"))
    labels, sides, note = split_left_right(mask[None], radiograph_volume(np.zeros(mask.shape)))
    assert [s.side for s in sides] == ["right", "left"] and note == ""
    cols = [np.argwhere(labels[0] == v)[:, 1].mean() for v in (1, 2)]
    assert cols[0] < cols[1]  # right lung on the viewer's left
    assert 0.6 < sides[0].voxels / sides[1].voxels < 1.6


def test_one_lung_alone_is_named_by_its_side_and_said_to_be_uncertain():
    folder = require_data("cxr_lung/chexmask_example")
    left = _read(folder / "LL_mask.png")
    labels, sides, note = split_left_right(left[None], radiograph_volume(np.zeros(left.shape)))
    assert [s.side for s in sides] == ["left"] and "Only one of the pair" in note
    assert split_left_right(np.zeros((1, 8, 8), bool), radiograph_volume(np.zeros((8, 8))))[1] == []


def test_a_card_with_a_left_right_class_names_both_sides_and_keeps_the_others():
    from ivdseg.inference.instances import named_instances

    folder = require_data("cxr_lung/chexmask_example")
    right, left, heart = (_read(folder / f"{n}_mask.png") for n in ("RL", "LL", "H"))
    labelmap = np.zeros(right.shape, np.uint8)
    labelmap[right | left] = 1
    labelmap[heart & ~(right | left)] = 2
    card = {"name": "lungs", "classes": [{"value": 1, "name": "lung", "color": [0.9, 0.5, 0.4]},
                                         {"value": 2, "name": "heart", "color": [0.8, 0.2, 0.2]}],
            "instances": {"lung": {"rule": "patient left / right"}}}
    levels, out, classes, notes = named_instances(
        Volume(labelmap[None], radiograph_volume(labelmap).ijk_to_ras), card)
    assert levels is None and notes == []
    assert [(c["value"], c["name"], c.get("side")) for c in classes] == [
        (1, "right lung", "right"), (2, "left lung", "left"), (3, "heart", None)]
    assert (out.array[0][right] == 1).mean() > 0.99 and (out.array[0][left] == 2).mean() > 0.99
    with pytest.raises(ValueError, match="names no instances"):
        named_instances(Volume(labelmap[None], np.eye(4)), {**card, "instances": {}})
