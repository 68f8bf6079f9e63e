"""The training panel's second source: an RLE mask table and its image folder, summarised for the panel and
exported through the worker (the Slicer side of the rle_csv source)."""

from __future__ import annotations

import json

import pytest
from conftest import require_slicer_core
from test_rle import CLASS_MAP, TABLE_CLASSES, uw_tree  # noqa: F401 - uw_tree is a fixture

require_slicer_core()


def test_the_summary_counts_images_cases_and_empty_slices_per_class(uw_tree):  # noqa: F811
    from IVDSegmentationLib.rletable import rleTableSummary, summaryText

    root, truth = uw_tree
    summary = rleTableSummary(root / "train.csv")
    assert summary["images"] == len(truth)
    assert summary["cases"] == len({i.split("_")[0] for i in truth})
    assert summary["imagesWithoutMask"] == sum(1 for _, masks in truth.values() if not any(m.any() for m in masks.values()))
    for cls in TABLE_CLASSES:
        with_mask = sum(1 for _, masks in truth.values() if masks[cls].any())
        assert summary["classes"][cls] == {"withMask": with_mask, "empty": len(truth) - with_mask}
    text = summaryText(summary)
    assert "large bowel:" in text and "without any mask" in text


def test_a_table_without_the_columns_is_one_sentence(tmp_path):
    from IVDSegmentationLib.rletable import rleTableSummary

    (tmp_path / "t.csv").write_text("id,organ,rle\ncase1_day1_slice_0001,stomach,1 2\n")
    with pytest.raises(ValueError, match="lacks the column"):
        rleTableSummary(tmp_path / "t.csv")
    with pytest.raises(ValueError, match="does not exist"):
        rleTableSummary(tmp_path / "none.csv")


def test_rle_export_runs_in_the_worker_and_keeps_overlaps(uw_tree, tmp_path):  # noqa: F811
    from IVDSegmentationLib.training import TrainingLogic

    root, truth = uw_tree
    logic = TrainingLogic()
    job = logic.startRleExport(root / "train.csv", root / "train", tmp_path / "ds", sizes=(64,), valFraction=0.2,
                               testFraction=0.2)
    job.worker.wait(timeout=300)
    info = TrainingLogic.finishExport(job)
    assert info.overlapping and info.slice_plane == "as stored"
    assert info.classes == ["background", *[c.replace("_", " ") for c in TABLE_CLASSES]]
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["table_class_names"] == {c.replace("_", " "): c for c in TABLE_CLASSES}
    assert sum(m["n_slices"] for m in info.cases.values()) == len(truth)
    from pathlib import Path

    assert not Path(job.tmpdir).exists()  # the private spec folder is gone
    with pytest.raises(ValueError, match="image folder"):
        logic.startRleExport(root / "train.csv", root / "nowhere", tmp_path / "ds2")
