"""Any structure, any label format, end to end: an RLE table of overlapping GI-tract classes -> export -> training
with sigmoid outputs and neighbouring-slice context -> the card -> segment of a scans folder into overlapping
segments and an RLE table in the training table's own names."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from test_rle import CLASS_MAP, TABLE_CLASSES, _png_path, uw_tree  # noqa: F401 - uw_tree is a fixture

from ivdseg import cli
from ivdseg.data.rle import decode_rle

pytest.importorskip("keras")


@pytest.fixture(scope="module")
def gi_model(uw_tree, tmp_path_factory):  # noqa: F811 - the fixture imported above
    root, truth = uw_tree
    tmp = tmp_path_factory.mktemp("gi")
    spec = {"classes": list(CLASS_MAP), "overlapping": True,
            "sources": [{"name": "uwmgi", "kind": "rle_csv", "root": str(root), "classes": CLASS_MAP}]}
    (tmp / "spec.json").write_text(json.dumps(spec))
    assert cli.main([str(a) for a in ["export", tmp / "ds", "--spec", tmp / "spec.json", "--sizes", "64",
                                      "--val-fraction", "0.2", "--test-fraction", "0.2", "--progress", "none"]]) == 0
    assert cli.main([str(a) for a in ["train", tmp / "ds", "-o", tmp / "run", "--size", "64", "--depth", "3",
                                      "--base-filters", "8", "--epochs", "2", "--steps-per-epoch", "3",
                                      "--batch-size", "4", "--context-slices", "1", "--no-augment",
                                      "--name", "gi-test", "--progress", "none"]]) == 0
    return tmp / "run" / "model", root, truth


def test_the_card_records_what_inference_must_repeat(gi_model):
    package, _, _ = gi_model
    card = json.loads((package / "model.json").read_text())
    assert card["overlapping"] is True and card["channels"] == 3 and card["context_slices"] == 1
    assert card["slice_plane"] == "as stored"
    assert card["label_priority"] == [1, 2, 3]
    assert card["rle_class_names"] == {name: values[0] for name, values in CLASS_MAP.items()}
    assert card["rle_order"] == "row-major"
    assert "--context-slices 1" in card["training"]["command"]
    assert set(card["validation"]["overall"]["dice"]) == set(CLASS_MAP)


def test_segment_of_a_scans_folder_writes_overlapping_segments_and_the_table(gi_model, tmp_path):
    slicerio = pytest.importorskip("slicerio")
    package, root, truth = gi_model
    scans = _png_path(root, "case117_day0_slice_0072").parent
    seg, table = tmp_path / "gi.seg.nrrd", tmp_path / "gi.csv"
    assert cli.main([str(a) for a in ["segment", scans, "-o", seg, "--model", package, "--rle-csv", table,
                                      "--progress", "none"]]) == 0
    segmentation = slicerio.read_segmentation(str(seg))
    assert [s["name"] for s in segmentation["segments"]] == list(CLASS_MAP)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    ids = sorted((i for i in truth if i.startswith("case117_day0_")), key=lambda i: int(i[-4:]))
    assert [r["id"] for r in rows[::3]] == ids  # one row per slice and class, in slice order
    assert {r["class"] for r in rows} == set(TABLE_CLASSES)  # the names of the table it was trained from
    # every row decodes to the segment of its slice and class, whatever the untrained network drew
    shape = truth[ids[0]][0].shape
    for name, values in CLASS_MAP.items():
        voxels = slicerio.extract_segments(segmentation, [(name, 1)])["voxels"].transpose(2, 1, 0) == 1
        for k, image_id in enumerate(ids):
            row = next(r for r in rows if r["id"] == image_id and r["class"] == values[0])
            assert np.array_equal(decode_rle(row["segmentation"], shape), voxels[k]), (image_id, name)


def test_label_bits_keep_the_overlaps_that_a_priority_labelmap_resolves(gi_model, tmp_path):
    from ivdseg.data.labels import labelmap_by_priority
    from ivdseg.io.volumes import read_volume

    package, root, _ = gi_model
    scans = _png_path(root, "case117_day0_slice_0072").parent
    for name, extra in (("bits.nrrd", ["--label-bits"]), ("priority.nrrd", [])):
        assert cli.main([str(a) for a in ["segment", scans, "-o", tmp_path / name, "--model", package,
                                          "--progress", "none", *extra]]) == 0
    bits = np.rint(read_volume(tmp_path / "bits.nrrd").array).astype(np.uint8)
    priority = np.rint(read_volume(tmp_path / "priority.nrrd").array).astype(np.uint8)
    assert bits.any()  # the two-epoch network draws something, so the comparison below compares something
    assert np.array_equal(labelmap_by_priority(bits, 4, [1, 2, 3]), priority)
    sidecars = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("bits.nrrd", "priority.nrrd")]
    assert "label_encoding" in sidecars[0] and sidecars[1]["label_priority"] == [1, 2, 3]


def test_evaluate_refuses_a_model_of_the_other_label_encoding(gi_model, tmp_path, capsys):
    import shutil

    package, _, _ = gi_model
    exclusive = tmp_path / "exclusive-model"
    shutil.copytree(package, exclusive)
    card = json.loads((exclusive / "model.json").read_text())
    (exclusive / "model.json").write_text(json.dumps({**card, "overlapping": False}))
    dataset = package.parent.parent / "ds"
    capsys.readouterr()
    assert cli.main([str(a) for a in ["evaluate", exclusive, dataset, "--split", "val"]]) == 2
    assert "exclusive" in capsys.readouterr().err


def test_encoder_weights_need_an_encoder_network(tmp_path):
    from ivdseg.errors import IvdsegError
    from ivdseg.nn.train import TrainConfig, check_config

    weights = tmp_path / "efficientnetb0_notop.h5"
    weights.write_bytes(b"h5")
    with pytest.raises(IvdsegError, match="takes no --encoder-weights"):
        check_config(TrainConfig(network="unet2d", encoder_weights=str(weights)))
    check_config(TrainConfig(network="efficientnet_b0_unet", encoder_weights=str(weights)))
