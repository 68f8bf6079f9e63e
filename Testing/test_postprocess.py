"""Post-processing: small 3D components go, per class; the card decides; evaluation chooses it on validation."""

import numpy as np
import pytest

from ivdseg.inference.postprocess import apply_card, drop_small_components


def _labels():
    a = np.zeros((3, 10, 10), np.uint8)
    a[:, 1:5, 1:5] = 1      # 48 voxels
    a[1, 8, 8] = 1          # 1 voxel: 1/48 of the largest
    a[0:2, 8:10, 0:2] = 1   # 8 voxels: 1/6 of the largest
    a[0, 0, 9] = 2          # class 2's only component stays
    return a


def test_drops_components_below_the_fraction_per_class():
    out = drop_small_components(_labels(), 0.1)
    assert (out == 1).sum() == 48 + 8 and (out == 2).sum() == 1 and out[1, 8, 8] == 0
    out = drop_small_components(_labels(), 0.5)
    assert (out == 1).sum() == 48
    np.testing.assert_array_equal(drop_small_components(_labels(), 0.0), _labels())


def test_adjacent_slices_connect():
    a = np.zeros((2, 5, 5), np.uint8)
    a[0, 1:3, 1:3] = 1
    a[1, 1:3, 1:3] = 1
    a[1, 4, 4] = 1
    out = drop_small_components(a, 0.5)
    assert (out == 1).sum() == 8


def test_card_switch():
    off = apply_card(_labels(), {"postprocessing": {"enabled": False, "min_component_fraction": 0.5}})
    np.testing.assert_array_equal(off, _labels())
    on = apply_card(_labels(), {"postprocessing": {"enabled": True, "min_component_fraction": 0.5}})
    assert (on == 1).sum() == 48
    np.testing.assert_array_equal(apply_card(_labels(), {}), _labels())


def test_bad_fraction():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        drop_small_components(_labels(), 1.0)
