"""Keypoint datasets and evaluation: the letterbox keeps points on their pixels, a landmarks CSV becomes points where
the CSV says, patients stay apart and unnamed, Cobb angles and the correction table take known values."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import exported_bytes, require_data

from ivdseg.data.keypoint_data import keypoint_names, read_dataset, read_samples, write_dataset
from ivdseg.errors import IvdsegError
from ivdseg.eval.keypoints_eval import cobb_angles, correction_curves, smape
from ivdseg.inference.keypoints import Letterbox, gaussian


@pytest.mark.parametrize("image_hw, input_hw", [((2000, 700), (512, 256)), ((221, 221), (256, 256)),
                                                ((640, 512), (256, 256)), ((50, 300), (64, 128))])
def test_the_letterbox_puts_a_bright_pixel_where_its_point_maps(image_hw, input_hw):
    h, w = image_hw
    point = np.array([[0.37 * h, 0.61 * w]])
    image = gaussian((h, w), point[0], sigma_px=max(h, w) / 60)
    box = Letterbox(image_hw, input_hw)
    out = box.image(image, fill=0.0)
    assert out.shape == input_hw
    peak = np.unravel_index(np.argmax(out), out.shape)
    np.testing.assert_allclose(box.to_input(point)[0], peak, atol=0.75)
    np.testing.assert_allclose(box.to_image(box.to_input(point)), point, atol=1e-9)
    assert abs(box.scale_rc[0] - box.scale_rc[1]) < 0.02 * box.scale_rc[0]  # the aspect ratio is kept


def _landmark_source(tmp_path, n_images=6):
    """Images named like the AASCE set (two images of one patient), a CSV of x-fractions then y-fractions."""
    root = tmp_path / "xr"
    (root / "data").mkdir(parents=True)
    names, rows, truth = [], [], {}
    rng = np.random.default_rng(0)
    for i in range(n_images):
        patient = 100 + i // 2
        name = f"sunhl-1th-02-Jan-2017-{patient} {'AB'[i % 2]} AP.jpg"
        h, w = 300 + 10 * i, 120
        points_rc = np.stack([rng.uniform(10, h - 10, 4), rng.uniform(10, w - 10, 4)], axis=1)
        image = np.zeros((h, w), np.uint8)
        for r, c in points_rc:
            cv2.circle(image, (int(round(c)), int(round(r))), 3, 255, -1)
        cv2.imwrite(str(root / "data" / name), image)
        names.append(name)
        rows.append(list(points_rc[:, 1] / w) + list(points_rc[:, 0] / h))
        truth[name] = points_rc
    (root / "filenames.csv").write_text("\n".join(names) + "\n")
    (root / "landmarks.csv").write_text("\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n")
    (root / "angles.csv").write_text("\n".join("10,5,3" for _ in names) + "\n")
    spec = {"keypoints": ["a", "b", "c", "d"], "sources": [{
        "name": "xr", "kind": "landmarks_csv", "root": str(root), "images": "data/*.jpg",
        "filenames": "filenames.csv", "landmarks": "landmarks.csv", "angles": "angles.csv",
        "patient_pattern": r"-(\d+) [A-Z]+ AP"}]}
    return spec, truth


def test_a_landmarks_csv_becomes_points_on_their_pixels_and_patients_stay_apart_and_unnamed(tmp_path):
    spec, truth = _landmark_source(tmp_path)
    names, samples = read_samples(spec, tmp_path)
    assert names == ["a", "b", "c", "d"] and len(samples) == 6
    for s in samples:
        r, c = s.points_rc[0]
        assert s.image[int(round(r)), int(round(c))] > 200  # the point sits on its drawn dot
    meta = write_dataset(tmp_path / "ds", names, samples, (128, 64), val_fraction=0.34, test_fraction=0.34)
    ds = read_dataset(tmp_path / "ds")
    assert meta["sources"]["xr"] == {"patients": 3, "samples": 6, "scored": 6}
    parts = [set(ds.splits[p]) for p in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    for part in ("train", "val", "test"):
        assert len(ds.part(part)["image"]) == 2  # both images of a patient on one side
    a = ds.arrays
    for image, points in zip(a["image"], a["points"]):
        r, c = points[0]
        assert image[int(round(r)), int(round(c))] > 0.5  # still on the dot after the letterbox
    blob = exported_bytes(tmp_path / "ds")
    assert b"sunhl" not in blob and b"jan-2017" not in blob and b" ap.jpg" not in blob


def test_bad_keypoint_specs_end_in_one_sentence(tmp_path):
    spec, _ = _landmark_source(tmp_path)
    with pytest.raises(IvdsegError, match="Unknown keypoint set"):
        keypoint_names("elbows")
    with pytest.raises(IvdsegError, match="kind must be one of"):
        read_samples({"keypoints": ["a"], "sources": [{"name": "x", "kind": "guess", "root": "."}]}, tmp_path)
    spec["keypoints"] = ["a", "b", "c"]
    with pytest.raises(IvdsegError, match="not 2 x 3 keypoints"):
        read_samples(spec, tmp_path)
    with pytest.raises(IvdsegError, match="not a keypoint dataset"):
        read_dataset(tmp_path)


def test_disc_centres_of_a_per_level_volume_are_its_level_masks_centroids():
    root = require_data("ivd_lumbar_t2")
    from ivdseg.io.geometry import sagittal_slices
    from ivdseg.io.volumes import read_volume

    spec = {"keypoints": "lumbar disc centres", "sources": [{
        "name": "ivd", "kind": "level_volumes", "root": str(root), "images": "nifti/case25_T2w.nii.gz",
        "labels": "nifti/{patient}_ivd_labels.nii.gz", "patient_pattern": "^(case\\d+)_", "neighbours": 1,
        "levels": {"L5-S1": 1, "L4-L5": 2, "L3-L4": 3, "L2-L3": 4, "L1-L2": 5}}]}
    names, samples = read_samples(spec, root)
    assert [s.mid for s in samples] == [False, True, False]
    labels, _ = sagittal_slices(read_volume(root / "nifti/case25_ivd_labels.nii.gz"))
    centre = np.argwhere(labels == 1).mean(axis=0)  # L5-S1, (slice, row, column)
    mid = next(s for s in samples if s.mid)
    np.testing.assert_allclose(mid.points_rc[names.index("L5-S1")], centre[1:])
    rows = mid.points_rc[:, 0]
    assert np.all(np.diff(rows) > 0)  # L1-L2 above L2-L3 ... above L5-S1
    assert mid.spacing_rc == pytest.approx((1.0, 1.0), abs=0.05)


def _spine(tilts_deg, step=40.0, width=60.0):
    """Corners (17 x 4, (x, y)) of vertebrae stacked downwards, each tilted by its angle."""
    out = []
    for v, tilt in enumerate(tilts_deg):
        cx, cy = 200.0, 50.0 + step * v
        t = np.radians(tilt)
        along = np.array([np.cos(t), np.sin(t)]) * width / 2
        down = np.array([-np.sin(t), np.cos(t)]) * 12.0
        centre = np.array([cx, cy])
        out += [centre - along - down, centre + along - down, centre - along + down, centre + along + down]
    return np.array(out)


def test_cobb_angles_of_known_tilts():
    np.testing.assert_allclose(cobb_angles(_spine([0.0] * 17)), [0, 0, 0], atol=1e-9)
    # an S: tilts rise to +20 at vertebra 5, fall to -15 at vertebra 12, come back to -5 at the bottom
    tilts = np.interp(range(17), [0, 5, 12, 16], [8.0, 20.0, -15.0, -5.0])
    largest, upper, lower = cobb_angles(_spine(tilts))
    assert largest == pytest.approx(35.0) and upper == pytest.approx(12.0) and lower == pytest.approx(10.0)
    assert smape([[10, 20, 30]], [[10, 20, 30]]) == 0.0
    assert smape([[0, 0, 0]], [[10, 10, 10]]) == pytest.approx(100.0)


def test_the_correction_table_on_a_model_that_moves_rigidly_with_the_hint():
    """A stand-in network that predicts every point shifted by 4 px, and, given a hint, shifts them all to fit it:
    one correction makes the model exact, while by hand each correction only removes one point's error."""
    k, size = 5, 64
    truth = np.array([[[10.0 + 10 * j, 30.0] for j in range(k)]] * 2)

    def run(x):
        hints = x[..., 1:]
        out = np.zeros((len(x), size, size, k), np.float32)
        for n in range(len(x)):
            shift = np.array([4.0, 0.0])
            for j in range(k):
                if hints[n, ..., j].max() > 0.5:
                    shift = np.array(np.unravel_index(np.argmax(hints[n, ..., j]), (size, size))) - truth[n, j]
            for j in range(k):
                out[n, ..., j] = gaussian(size, truth[n, j] + shift, 2.0)
        return out

    images = np.zeros((2, size, size, 1), np.float32)
    scale, spacing = np.ones((2, 2)), np.full((2, 2), 0.5)  # 0.5 mm pixels
    curves = correction_curves(run, images, truth, scale, spacing, sigma_px=2.0, rounds=3)
    np.testing.assert_allclose(curves["model"].mean(axis=1), [2.0, 0.0, 0.0, 0.0], atol=0.02)
    np.testing.assert_allclose(curves["manual"].mean(axis=1), [2.0, 1.6, 1.2, 0.8], atol=0.02)
