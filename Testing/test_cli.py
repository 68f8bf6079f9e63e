"""The command line: bad input ends in exit code 2 and one sentence naming the file, never a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ivdseg import cli
from ivdseg.data.export import ExportOptions, RawCase, export_dataset


def run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_sentence(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def dataset(tmp_path):
    cases = []
    for i in range(4):
        label = np.zeros((2, 32, 32), np.uint8)
        label[:, 8:16, 8:20] = 1
        cases.append(RawCase(patient=f"p{i}", source="s", image=np.ones((2, 32, 32), np.float32), label=label))
    export_dataset(cases, ["intervertebral disc"], tmp_path / "ds", ExportOptions(sizes=(32,)))
    return tmp_path / "ds"


def test_export_without_sources(tmp_path, capsys):
    code, _, err = run(["export", tmp_path / "d"], capsys)
    assert code == 2 and "needs --spec" in _one_sentence(err)


def test_export_with_no_matching_images(tmp_path, capsys):
    code, _, err = run(["export", tmp_path / "d", "--images", str(tmp_path / "none*.png"), "--labels", "{stem}.npy",
                        "--kind", "slices", "--class", "disc=1"], capsys)
    assert code == 2 and "No image matches" in _one_sentence(err)
    assert not (tmp_path / "d").exists()


def test_export_bad_spec(tmp_path, capsys):
    (tmp_path / "spec.json").write_text("{not json")
    code, _, err = run(["export", tmp_path / "d", "--spec", tmp_path / "spec.json"], capsys)
    assert code == 2 and "spec.json is not a readable JSON" in _one_sentence(err)


def test_export_existing_folder(dataset, capsys):
    code, _, err = run(["export", dataset, "--images", "x", "--labels", "y", "--class", "disc=1"], capsys)
    assert code == 2 and "already exists" in _one_sentence(err)


def test_train_on_unknown_format_version(dataset, tmp_path, capsys):
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["format_version"] = 7
    (dataset / "dataset.json").write_text(json.dumps(meta))
    code, _, err = run(["train", dataset, "-o", tmp_path / "run", "--size", "32", "--progress", "text"], capsys)
    assert code == 2 and "format version 7" in _one_sentence(err)


def test_train_on_missing_size(dataset, tmp_path, capsys):
    code, _, err = run(["train", dataset, "-o", tmp_path / "run", "--size", "256", "--progress", "text"], capsys)
    assert code == 2 and "has no 256 px copy" in _one_sentence(err)


def test_error_is_also_a_json_event(dataset, tmp_path, capsys):
    code, out, err = run(["train", tmp_path / "nope", "-o", tmp_path / "run", "--progress", "jsonl"], capsys)
    assert code == 2 and "is not a folder" in _one_sentence(err)
    event = json.loads(out.strip().splitlines()[-1])
    assert event["event"] == "error" and "is not a folder" in event["message"]


def test_evaluate_with_missing_model(dataset, tmp_path, capsys):
    code, _, err = run(["evaluate", tmp_path / "no-model", dataset], capsys)
    assert code == 2 and "No model package at" in _one_sentence(err)


def test_bad_class_argument(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["export", str(tmp_path / "d"), "--class", "disc"])
    assert exc.value.code == 2
