"""Disc instances and level names: synthetic spines built here (known counts, touching discs, a disc split across
slices, a missing disc, no anchor in view) and the real ivd_lumbar_t2 volumes, whose labels name every level."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_data

from ivdseg.inference.levels import DISC_LEVELS, name_levels, split_instances
from ivdseg.io.geometry import Volume

STEP_MM = 36.0  # lumbar disc spacing


def _spine(n_discs=5, skip=(), bridge=None, shape=(220, 60, 70), spacing=(1.0, 1.0, 2.0)):
    """A mask of flat elliptic discs stacked from superior to inferior, and its volume geometry.

    Array axes (k, j, i) = (S, A, R) with the given spacing (mm) along (i, j, k) = (R, A, S), origin 0; disc n (0 =
    most superior) centred at S = 200 - n * STEP_MM. ``skip``: discs left out; ``bridge``: (n, n + 1) joined by a
    thin column of disc voxels, as a segmentation that runs two discs together."""
    ijk_to_ras = np.diag([*spacing, 1.0])
    k, j, i = np.indices(shape, dtype=np.float64)
    s, a, r = k * spacing[2], j * spacing[1], i * spacing[0]
    mask = np.zeros(shape, bool)
    for n in range(n_discs):
        if n in skip:
            continue
        centre_s = 400 - n * STEP_MM
        # 40 mm deep (A), 70 mm wide (R: the sagittal slices it spans), 9 mm high (S), 10 deg of lordosis
        tilt = np.radians(10.0 * (n - 2) / 2)
        u = (s - centre_s) * np.cos(tilt) - (a - 30) * np.sin(tilt)
        mask |= ((a - 30) / 20) ** 2 + (u / 4.5) ** 2 + ((r - 35) / 35) ** 2 <= 1
    if bridge is not None:
        top, bottom = (400 - b * STEP_MM for b in bridge)
        mask |= (s <= top) & (s >= bottom) & ((a - 30) ** 2 + (r - 35) ** 2 <= 3.0 ** 2)
    return mask, Volume(np.zeros(shape, np.int16), ijk_to_ras)


def _anchor(labels, volume, level_index_from_top):
    """The instance value at the n-th disc from the top (what a model's anchor would mark)."""
    values = [v for v in range(1, labels.max() + 1) if (labels == v).any()]
    heights = {v: np.argwhere(labels == v)[:, 0].mean() for v in values}
    return sorted(values, key=lambda v: -heights[v])[level_index_from_top]


def test_five_discs_are_five_instances_named_from_the_anchor():
    mask, volume = _spine()
    labels, n = split_instances(mask, volume)
    assert n == 5
    result = name_levels(labels, volume, anchor_value=_anchor(labels, volume, 4), anchor_reason="test")
    assert [d.level for d in result.discs] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    assert [d.value for d in result.discs] == [1, 2, 3, 4, 5]
    assert [d.name for d in result.discs][-1] == "L5-S1 intervertebral disc"
    assert result.anchor == "L5-S1: test" and not result.uncertain and result.missing == []
    heights = [d.centre_ras[2] for d in result.discs]
    assert heights == sorted(heights, reverse=True)  # superior first
    assert heights[0] == pytest.approx(400, abs=1) and heights[-1] == pytest.approx(400 - 4 * STEP_MM, abs=1)
    # relabelled 1..n from the top: value 1 holds the most superior disc's voxels
    assert np.argwhere(result.labels == 1)[:, 0].mean() * 2.0 == pytest.approx(400, abs=1)
    # each disc's volume: an ellipsoid of semi-axes 20, 4.5, 35 mm (within the voxel discretisation)
    assert all(d.volume_ml == pytest.approx(4 / 3 * np.pi * 20 * 4.5 * 35 / 1000, rel=0.05) for d in result.discs)


def test_touching_discs_are_separated():
    mask, volume = _spine(bridge=(1, 2))
    from scipy import ndimage

    assert ndimage.label(mask, structure=np.ones((3, 3, 3)))[1] == 4  # two of the five run together
    labels, n = split_instances(mask, volume)
    assert n == 5
    result = name_levels(labels, volume, anchor_value=_anchor(labels, volume, 4))
    assert [d.level for d in result.discs] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]
    sizes = [d.voxels for d in result.discs]
    assert max(sizes) < 1.3 * min(sizes)  # the bridge went to the two discs, not a disc to its neighbour


def test_a_disc_split_across_slices_stays_one_instance():
    mask, volume = _spine()
    mask[:, :, 34:37] = False  # a gap of three sagittal slices through the middle of every disc
    labels, n = split_instances(mask, volume)
    assert n == 10  # the mask alone leaves each disc in two halves...
    result = name_levels(labels, volume, anchor_value=_anchor(labels, volume, 9))
    assert len(result.discs) == 5  # ...but both halves lie at one height of the spine: one disc
    assert [d.level for d in result.discs] == ["L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1"]


def test_a_missing_disc_keeps_the_names_of_the_others_and_is_reported():
    mask, volume = _spine(skip=(2,))
    labels, n = split_instances(mask, volume)
    assert n == 4
    result = name_levels(labels, volume, anchor_value=_anchor(labels, volume, 3))
    assert [d.level for d in result.discs] == ["L1-L2", "L2-L3", "L4-L5", "L5-S1"]
    assert result.missing == ["L3-L4"]


def test_without_an_anchor_the_discs_are_numbered_never_named():
    mask, volume = _spine(skip=(2,))
    labels, _ = split_instances(mask, volume)
    result = name_levels(labels, volume, anchor_value=None)
    assert result.uncertain and result.anchor is None
    assert [d.level for d in result.discs] == [None] * 4
    assert [d.name for d in result.discs] == [f"intervertebral disc {k}" for k in range(1, 5)]
    assert "No anchor of the spine" in result.note
    assert result.missing == ["between disc 2 and disc 3"]


def test_discs_that_cannot_fit_the_spine_are_left_unnamed():
    mask, volume = _spine()
    labels, _ = split_instances(mask, volume)
    result = name_levels(labels, volume, anchor_value=_anchor(labels, volume, 0), anchor_level="L5-S1")
    assert result.uncertain and [d.level for d in result.discs] == [None] * 5 and "do not fit" in result.note
    with pytest.raises(ValueError, match="anchor level"):
        name_levels(labels, volume, anchor_value=1, anchor_level="L6-S1")


def test_no_disc_gives_an_empty_result():
    mask, volume = _spine(n_discs=0)
    labels, n = split_instances(mask, volume)
    assert n == 0
    result = name_levels(labels, volume)
    assert result.discs == [] and not result.labels.any()


def test_specks_are_not_discs():
    mask, volume = _spine()
    mask[10, 5, 5] = mask[100, 50, 60] = True
    assert split_instances(mask, volume)[1] == 5


def test_the_levels_list_runs_from_c2_c3_to_l5_s1():
    assert DISC_LEVELS[0] == "C2-C3" and DISC_LEVELS[5] == "C7-T1" and DISC_LEVELS[17] == "T12-L1"
    assert DISC_LEVELS[-1] == "L5-S1" and len(DISC_LEVELS) == 23 and len(set(DISC_LEVELS)) == 23


@pytest.mark.parametrize("case", ["case11", "case20", "case25", "case42"])
def test_real_lumbar_discs_are_split_and_named_as_their_labels_say(case):
    """ivd_lumbar_t2 labels each disc by level (1 = L5-S1 ... 5 = L1-L2): merged into one class, split again and
    counted from the L5-S1 disc, every disc gets its own level back."""
    from ivdseg.io.volumes import read_volume

    truth = read_volume(require_data(f"ivd_lumbar_t2/nifti/{case}_ivd_labels.nii.gz"))
    levels = {1: "L5-S1", 2: "L4-L5", 3: "L3-L4", 4: "L2-L3", 5: "L1-L2"}
    labels, n = split_instances(truth.array > 0, truth)
    assert n == 5
    l5s1 = int(np.bincount(labels[truth.array == 1]).argmax())
    result = name_levels(labels, truth, anchor_value=l5s1)
    for disc in result.discs:
        value = int(np.bincount(truth.array[result.labels == disc.value].astype(int)).argmax())
        assert disc.level == levels[value]


def test_the_review_threshold_separates_poorly_segmented_discs():
    from ivdseg.eval.levels import choose_review_threshold

    discs = [{"uncertainty": u, "dice": d} for u, d in
             [(0.05, 0.92), (0.08, 0.90), (0.10, 0.88), (0.12, 0.86), (0.30, 0.70), (0.35, 0.60), (0.11, 0.75)]]
    chosen = choose_review_threshold(discs)
    # Above 0.10: all three poor discs and one good one (sensitivity 1, specificity 3/4, J = 0.75); above 0.12 only
    # the two worst (sensitivity 2/3, specificity 1, J = 0.67): the first cut is chosen.
    assert chosen["threshold"] == pytest.approx(0.10) and chosen["poor"] == 3 and chosen["discs"] == 7
    assert chosen["sensitivity"] == 1.0 and chosen["specificity"] == 0.75
    assert choose_review_threshold(discs[:4])["threshold"] is None  # no poor disc: nothing to separate
