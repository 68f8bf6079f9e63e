"""The keypoint commands end to end on a small package built here: the user's fixed points stay exactly where given
and are locked, every keypoint is written in the package's order, and each mistake ends in one sentence."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from conftest import require_data

from ivdseg.cli import main
from ivdseg.io.markups import read_points

NAMES = ["a", "b", "c", "d"]


def _package(folder, plane):
    pytest.importorskip("keras")
    from ivdseg.nn.networks import build_keypoint_unet
    from ivdseg.nn.train import _save_with_onnx
    from ivdseg.progress import Reporter

    model = build_keypoint_unet((64, 32), len(NAMES), depth=2, base_filters=4)
    card = {"task": "keypoints", "name": f"tiny-{plane}", "version": "0.1.0", "network": "keypoint_unet",
            "input_shape": [64, 32], "channels": 1, "normalization": {"kind": "percentile", "percentiles": [0.5, 99.5]},
            "resize": "letterbox", "slice_plane": plane, "keypoints": NAMES, "hint_sigma_px": 2.0}
    return _save_with_onnx(model, card, folder, {}, Reporter("none"))  # Keras and ONNX, as trained


@pytest.fixture(scope="module")
def image_package(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("kp") / "image-model", "image")


@pytest.fixture(scope="module")
def sagittal_package(tmp_path_factory):
    return _package(tmp_path_factory.mktemp("kp") / "sagittal-model", "sagittal")


@pytest.fixture
def xray(tmp_path):
    image = (np.random.default_rng(0).random((200, 80)) * 255).astype(np.uint8)
    path = tmp_path / "xray.png"
    cv2.imwrite(str(path), image)
    return path


def test_a_fixed_point_on_a_picture_stays_where_given_locked_and_the_csv_follows_the_model_order(
        image_package, xray, tmp_path):
    out, table = tmp_path / "points.mrk.json", tmp_path / "points.csv"
    assert main(["keypoints", str(xray), "--model", str(image_package), "-o", str(out), "--fix", "c=12.5,150",
                 "--csv", str(table), "--progress", "none"]) == 0
    points = read_points(out)
    assert [p.label for p in points] == NAMES and [p.locked for p in points] == [False, False, True, False]
    assert points[2].ras == pytest.approx((-12.5, -150.0, 0.0))  # LPS (column, row) as Slicer places a PNG
    rows = list(csv.reader(table.open()))
    assert rows[0] == ["label", "x", "y"] and [r[0] for r in rows[1:]] == NAMES
    assert (float(rows[3][1]), float(rows[3][2])) == (12.5, 150.0)
    for r, p in zip(rows[1:], points):  # the CSV and the point list agree
        assert (float(r[1]), float(r[2])) == pytest.approx((-p.ras[0], -p.ras[1]), abs=1e-3)
        assert 0 <= float(r[1]) <= 80 and 0 <= float(r[2]) <= 200


def test_a_fixed_point_in_patient_coordinates_stays_exact_on_a_volume(sagittal_package, tmp_path):
    case = require_data("ivd_lumbar_t2") / "nifti/case25_T2w.nii.gz"
    from ivdseg.inference.keypoint_predict import mid_sagittal
    from ivdseg.io.volumes import read_volume

    image = mid_sagittal(read_volume(case))
    where = image.to_ras([[120.0, 90.0]])[0]
    np.testing.assert_allclose(image.from_ras([where])[0], [120.0, 90.0], atol=1e-9)
    out = tmp_path / "discs.mrk.json"
    fix = ",".join(f"{v:.4f}" for v in where)
    assert main(["keypoints", str(case), "--model", str(sagittal_package), "-o", str(out), "--fix", f"b={fix}",
                 "--progress", "none"]) == 0
    points = read_points(out)
    assert points[1].locked and points[1].ras == pytest.approx(tuple(where), abs=1e-3)
    normal = image.pixel_to_ras[:3, 2]
    for p in points:  # every point lies on the mid-sagittal slice
        assert float(np.dot(np.asarray(p.ras) - image.pixel_to_ras[:3, 3], normal)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("extra, message", [
    (["--fix", "elbow=1,2"], "has no keypoint 'elbow'"),
    (["--fix", "a=500,20"], "lies outside the image"),
    (["--fix", "a=1,2,3"], "a 2D image takes the pixel column and row"),
    (["--fix", "a=1"], "--fix takes LABEL=X,Y"),
    (["--fix", "a=1,2", "--fix", "a=3,4"], "gives a twice"),
    ([f"--fix={n}=1,1" for n in "abcda"], "5 --fix points, but the model has only 4 keypoints"),
])
def test_bad_fixes_end_in_one_sentence_and_nothing_is_written(image_package, xray, tmp_path, capsys, extra, message):
    out = tmp_path / "p.mrk.json"
    assert main(["keypoints", str(xray), "--model", str(image_package), "-o", str(out), *extra,
                 "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_images_and_models_the_command_cannot_take(image_package, xray, tmp_path, capsys):
    colour = tmp_path / "colour.png"
    cv2.imwrite(str(colour), np.dstack([np.zeros((40, 40), np.uint8), np.full((40, 40), 200, np.uint8),
                                        np.zeros((40, 40), np.uint8)]))
    case = require_data("ivd_lumbar_t2") / "nifti/case25_T2w.nii.gz"
    for args, message in (([str(colour), "--model", str(image_package)], "is a colour image"),
                          ([str(case), "--model", str(image_package)], "takes 2D images"),
                          ([str(xray), "--model", "ivd-disc-2d"], "is a segmentation model, not a keypoint model")):
        assert main(["keypoints", *args, "-o", str(tmp_path / "p.mrk.json"), "--progress", "none"]) == 2
        assert message in capsys.readouterr().err
    assert main(["keypoints", str(xray), "--model", str(image_package), "-o", str(tmp_path / "p.json")]) == 2
    assert "must end in .mrk.json" in capsys.readouterr().err


def test_evaluate_keypoints_prints_the_correction_table(image_package, tmp_path, capsys):
    from ivdseg.data.keypoint_data import RawSample, write_dataset

    rng = np.random.default_rng(1)
    samples = [RawSample("s1", f"p{i}", rng.random((128, 64)).astype(np.float32),
                         rng.uniform(5, 60, (4, 2)), spacing_rc=(0.5, 0.5)) for i in range(6)]
    write_dataset(tmp_path / "ds", NAMES, samples, (64, 32), val_fraction=0.34, test_fraction=0.34)
    assert main(["evaluate-keypoints", str(image_package), str(tmp_path / "ds"), "--json",
                 str(tmp_path / "t.json")]) == 0
    out = capsys.readouterr().out
    assert "| s1 | 2 | 3 |" in out and "mm" in out and "(one peak each)" in out  # how its heatmaps were decoded
    import json

    table = json.loads((tmp_path / "t.json").read_text())
    model, manual = table["per_source"]["s1"]["model"], table["per_source"]["s1"]["manual"]
    assert model[0] == pytest.approx(manual[0]) and manual == sorted(manual, reverse=True)


def test_train_keypoints_writes_a_package_with_its_correction_tables(tmp_path, capsys):
    pytest.importorskip("keras")
    from ivdseg.data.keypoint_data import RawSample, write_dataset
    from ivdseg.models.package import load_package, read_card

    rng = np.random.default_rng(2)
    samples = []
    for i in range(9):  # a bright dot per keypoint, three sources' worth of patients in one source
        image = np.zeros((96, 48), np.float32)
        points = np.stack([rng.uniform(8, 88, 4), rng.uniform(6, 42, 4)], axis=1)
        for r, c in points:
            image[int(r) - 1:int(r) + 2, int(c) - 1:int(c) + 2] = 1.0
        samples.append(RawSample("s", f"p{i}", image, points))
    write_dataset(tmp_path / "ds", NAMES, samples, (64, 32), val_fraction=0.25, test_fraction=0.25)
    assert main(["train-keypoints", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--epochs", "2",
                 "--depth", "2", "--base-filters", "4", "--mode", "prompt", "--plane", "image", "--name", "dots",
                 "--hints-every-scale", "--max-hints", "2", "--loss", "focal", "--progress", "jsonl"]) == 0
    events = [line for line in capsys.readouterr().out.splitlines() if '"epoch"' in line]
    assert len(events) == 2 and "val_mre0" in events[0]
    card = read_card(tmp_path / "run" / "model")
    assert card["task"] == "keypoints" and card["keypoints"] == NAMES and card["training"]["mode"] == "prompt"
    assert card["architecture"]["hints"] == "every_scale" and "--hints-every-scale" in card["training"]["command"]
    for part in ("validation", "test"):
        entry = card[part]["per_source"]["s"]
        assert entry["unit"] == "px" and len(entry["model"]) == len(entry["manual"]) == 4
    assert card["training"]["loss"] == "focal" and "--loss focal" in card["training"]["command"]
    decode = card["decode"]  # chosen on validation at the end of training, with the figures that chose it
    assert decode["method"] in ("chain", "peaks") and set(decode["validation_mre_px"]) == {
        "peaks", "chain 0.3", "chain 1", "chain 3"} and "Decoding" in (tmp_path / "run" / "model" / "MODEL_CARD.md").read_text()
    assert card["training"]["max_hints"] == 2 and "--max-hints 2" in card["training"]["command"]
    assert "--mode prompt" in card["training"]["command"] and str(tmp_path) not in json_text(tmp_path / "run")
    model, _ = load_package(tmp_path / "run" / "model")
    assert getattr(model, "optimizer", None) is None  # the package holds the network only
    assert (tmp_path / "run" / "model" / "model.onnx").is_file()
    assert main(["train-keypoints", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--epochs", "2"]) == 2
    assert "already holds a run" in capsys.readouterr().err  # neither --resume nor --overwrite
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert main(["train-keypoints", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--epochs", "3", "--resume",
                 "--depth", "2", "--base-filters", "4", "--mode", "prompt", "--plane", "image", "--name", "dots",
                 "--hints-every-scale", "--max-hints", "2", "--loss", "focal", "--progress", "jsonl"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"epoch"' in line]
    assert [e["epoch"] for e in events] == [3]  # the two epochs run before are not trained again
    resumed = json.loads((tmp_path / "run" / "history.json").read_text())
    assert resumed[:2] == history and len(resumed) == 3
    assert read_card(tmp_path / "run" / "model")["training"]["epochs_run"] == 3
    assert main(["train-keypoints", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--epochs", "4", "--resume",
                 "--depth", "3", "--base-filters", "4", "--mode", "prompt", "--hints-every-scale"]) == 2
    assert "Cannot resume" in capsys.readouterr().err
    assert main(["train-keypoints", str(tmp_path / "ds"), "-o", str(tmp_path / "fresh"), "--resume"]) == 2
    assert "Nothing to resume" in capsys.readouterr().err and not (tmp_path / "fresh").exists()
    assert main(["train-keypoints", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
    assert main(["train-keypoints", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--max-hints", "-1"]) == 2
    assert "--max-hints must be at least 0" in capsys.readouterr().err
    assert main(["train-keypoints", str(tmp_path / "ds"), "-o", str(tmp_path / "run"), "--morphology-weight",
                 "-0.5"]) == 2
    assert "--morphology-weight must be 0 or more" in capsys.readouterr().err
    (tmp_path / "card.json").write_text("[1, 2]")
    assert main(["train-keypoints", str(tmp_path / "ds"), "-o", str(tmp_path / "run4"), "--card",
                 str(tmp_path / "card.json")]) == 2  # refused before any training, nothing written
    assert "--card" in capsys.readouterr().err and not (tmp_path / "run4").exists()
    common = [str(tmp_path / "ds"), "--epochs", "1", "--base-filters", "4", "--mode", "revise", "--progress", "none",
              "--init-from", str(tmp_path / "run" / "model"), "--hints-every-scale"]
    assert main(["train-keypoints", "-o", str(tmp_path / "run2"), "--depth", "2", "--weights", "float16",
                 "--morphology-weight", "0.5", *common]) == 0
    card2 = read_card(tmp_path / "run2" / "model")
    assert card2["training"]["morphology_weight"] == 0.5 and "--morphology-weight 0.5" in card2["training"]["command"]
    assert card["training"]["morphology_weight"] == 0.0 and "--morphology-weight" not in card["training"]["command"]
    assert card2["training"]["init_from"] == "model" and card2["weights_storage"] == "float16"
    assert "--weights float16" in card2["training"]["command"]
    half, _ = load_package(tmp_path / "run2" / "model")  # what the card's tables scored: float16 values
    assert all(np.array_equal(w, w.astype(np.float16).astype(np.float32)) for w in half.get_weights())
    assert main(["train-keypoints", "-o", str(tmp_path / "run3"), "--depth", "3", *common]) == 2
    assert "another network shape" in capsys.readouterr().err and not (tmp_path / "run3" / "model").exists()
    assert main(["train-keypoints", "-o", str(tmp_path / "run5"), "--depth", "2", *common[:-1]]) == 2  # hints at input only
    assert "--hints-every-scale" in capsys.readouterr().err and not (tmp_path / "run5" / "model").exists()


def json_text(run) -> str:
    return (run / "model" / "model.json").read_text() + (run / "model" / "MODEL_CARD.md").read_text()
