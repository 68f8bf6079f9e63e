"""Training through the real command (a subprocess, as the Slicer worker runs it) on real slices.

Slow: a tiny network really trains for a few epochs on SPIDER slices of 6 patients and its
validation Dice must rise; then an interrupted run resumes, and evaluate reads the package back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, require_data

from ivdseg.progress import parse_events

pytestmark = pytest.mark.slow


def run_ivdseg(*args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "IVDSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "ivdseg", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"ivdseg {args[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory):
    spider = require_data("spider_t2_2d")
    tmp = tmp_path_factory.mktemp("train")
    spec = {"classes": ["intervertebral disc"], "sources": [{
        "name": "spider", "kind": "slices", "root": str(spider),
        # subjects 5, 7, 11, 18, 35, 45: a handful of real patients, every slice
        "images": "images/[1-5]*_t2_SPACE_slice*.png", "labels": "labels/{name}",
        "patient_pattern": r"^(5|7|11|18|35|45)_t2", "classes": {"intervertebral disc": [2]}}]}
    # keep only those six subjects: other names would not match the pattern
    import glob

    keep = [p for p in glob.glob(str(spider / "images" / "*.png"))
            if Path(p).name.split("_")[0] in {"5", "7", "11", "18", "35", "45"}]
    assert len(keep) > 60
    links = tmp / "src"
    (links / "images").mkdir(parents=True)
    (links / "labels").mkdir()
    for p in keep:
        name = Path(p).name
        os.symlink(p, links / "images" / name)
        os.symlink(spider / "labels" / name, links / "labels" / name)
    spec["sources"][0]["root"] = str(links)
    spec["sources"][0]["images"] = "images/*.png"
    (tmp / "spec.json").write_text(json.dumps(spec))
    proc = run_ivdseg("export", tmp / "ds", "--spec", tmp / "spec.json", "--sizes", "64",
                      "--val-fraction", "0.34", "--progress", "jsonl")
    done = parse_events(proc.stdout.splitlines())[-1]
    assert done["event"] == "done" and done["patients"] == 6 and done["val_patients"] == 2
    return tmp / "ds"


def _train_args(ds, out, epochs):
    return ["train", ds, "-o", out, "--size", "64", "--depth", "3", "--base-filters", "8", "--epochs", epochs,
            "--batch-size", "8", "--steps-per-epoch", "30", "--learning-rate", "3e-3", "--activation", "swish", "--progress", "jsonl"]


def test_training_raises_dice_resumes_and_packages(real_dataset, tmp_path):
    run = tmp_path / "run"
    first = parse_events(run_ivdseg(*_train_args(real_dataset, run, 2)).stdout.splitlines())
    epochs = [e for e in first if e["event"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    # resume the "interrupted" run: it continues at epoch 3 from last.keras
    (run / "model").rename(tmp_path / "first_model")
    proc = run_ivdseg(*_train_args(real_dataset, run, 6), "--resume")
    events = parse_events(proc.stdout.splitlines())
    later = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in later] == [3, 4, 5, 6]
    dice = [e["val_dice"] for e in epochs + later]
    assert max(dice) > dice[0] + 0.15, dice  # it really learns discs
    assert max(dice) > 0.4, dice
    done = events[-1]
    assert done["event"] == "done" and done["best_epoch"] == int(np.argmax(dice)) + 1
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("best-*.keras"))
    assert len(ckpts) <= 3  # only the best N are kept
    card = json.loads((run / "model" / "model.json").read_text())
    assert card["network"] == "unet2d" and card["architecture"]["activation"] == "swish"
    assert card["validation"]["per_source"]["spider"]["patients"] == 2
    assert card["validation"]["overall"]["dice"]["intervertebral disc"] > 0.3
    assert (run / "model" / "model.onnx").is_file() and "onnx" in card["backends"]
    lines = (run / "log.csv").read_text().splitlines()
    assert lines[0].startswith("epoch") and len(lines) == 7  # header + 6 epochs, appended on resume
    out = run_ivdseg("evaluate", run / "model", real_dataset).stdout
    assert "spider" in out and "intervertebral disc" in out


def test_fresh_run_refuses_an_occupied_folder_and_resume_needs_a_checkpoint(real_dataset, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.keras").write_bytes(b"x")
    proc = run_ivdseg(*_train_args(real_dataset, tmp_path / "run", 1), check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    proc = run_ivdseg(*_train_args(real_dataset, tmp_path / "other", 1), "--resume", check=False)
    assert proc.returncode == 2 and "Nothing to resume" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_packages_the_best_model_so_far(real_dataset, tmp_path):
    """The GUI's Stop (SIGTERM) ends training at once and still leaves a loadable package."""
    import signal
    import time

    from ivdseg.models.package import load_package

    env = {**os.environ, "PYTHONPATH": str(ROOT / "IVDSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "ivdseg", *map(str, _train_args(real_dataset, tmp_path / "run", 50))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    deadline = time.time() + 300
    for line in proc.stdout:
        lines.append(line)
        if '"event": "epoch"' in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    events = parse_events(lines + out.splitlines())
    assert proc.returncode == 0, err[-2000:]
    done = events[-1]
    assert done["event"] == "done" and done["stopped"] is True and done["epochs_run"] < 50
    model, card = load_package(tmp_path / "run" / "model")
    assert card["training"]["best_epoch"] >= 1
    assert (tmp_path / "run" / "checkpoints" / "last.keras").is_file()


def test_model_card_holds_no_path_of_this_machine(tmp_path, capsys):
    """A tiny real training (in this process, seconds): model.json and MODEL_CARD.md name no folder of ours,
    while the training command in the card still says how to repeat the run."""
    from ivdseg import cli
    from ivdseg.data.export import ExportOptions, RawCase, export_dataset
    from ivdseg.models.package import load_package, save_package
    from ivdseg.nn import networks

    home = tmp_path / "jane.doe" / "project"  # a path that names someone, as a user's home does
    home.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cases = []
    for i in range(4):
        label = np.zeros((2, 32, 32), np.uint8)
        label[:, 8:16, 8:20] = 1
        cases.append(RawCase(patient=f"p{i}", source="site", image=rng.random((2, 32, 32), dtype=np.float32) + label,
                             label=label))
    export_dataset(cases, ["intervertebral disc"], home / "ds", ExportOptions(sizes=(32,)))
    classes = [{"value": 1, "name": "intervertebral disc", "color": [0.3, 0.8, 0.6]}]
    start = save_package(networks.build_unet2d(input_size=32, depth=2, base_filters=4),
                         {"name": "start", "version": "0", "network": "unet2d", "input_size": 32, "channels": 1,
                          "normalization": {"method": "percentile", "percentiles": [0.5, 99.5]},
                          "slice_plane": "sagittal", "classes": classes}, home / "start-pkg")
    (home / "extract.json").write_text(json.dumps({"licence": "CC-BY-4.0"}))
    code = cli.main([str(a) for a in ["train", home / "ds", "-o", home / "run", "--size", "32", "--depth", "2",
                                      "--base-filters", "4", "--epochs", "1", "--steps-per-epoch", "1",
                                      "--batch-size", "4", "--init-from", start, "--card", home / "extract.json",
                                      "--weights", "float16", "--progress", "none"]])
    assert code == 0, capsys.readouterr().err
    card_text = (home / "run" / "model" / "model.json").read_text()
    markdown = (home / "run" / "model" / "MODEL_CARD.md").read_text()
    for text in (card_text, markdown):
        assert str(tmp_path) not in text and "jane.doe" not in text
    command = json.loads(card_text)["training"]["command"]
    assert command == ("ivdseg train DATASET -o RUN --network unet2d --size 32 --activation relu --depth 2 "
                       "--base-filters 4 --dropout 0.0 --loss dice_ce --epochs 1 --batch-size 4 --learning-rate 0.001 "
                       "--steps-per-epoch 1 --patience 15 --keep-best 3 --seed 0 --augmentation standard "
                       "--source-sampling slices --mixed-precision auto "
                       "--init-from start-pkg --context-slices 0 --weights float16 --name ivdseg-model --model-version 1.0.0 --card extract.json")
    assert f"`{command}`" in markdown
    assert json.loads(card_text)["licence"] == "CC-BY-4.0"
    assert json.loads(card_text)["training"]["source_shares"] == {"site": 1.0}
    # --weights float16: the package stores half-size weights, and what the card's figures scored is what it stores
    assert json.loads(card_text)["weights_storage"] == "float16"
    model, _ = load_package(home / "run" / "model")
    assert all(np.array_equal(w, w.astype(np.float16).astype(np.float32)) for w in model.get_weights())
    # the run folder is the user's own: its config may name the dataset
    assert json.loads((home / "run" / "config.json").read_text())["dataset"] == str(home / "ds")


def test_batches_can_draw_each_source_alike_and_the_card_says_the_shares(tmp_path, capsys, monkeypatch):
    """A small source beside a large one: with --source-sampling equal each gets half of the training draws, and
    the card records the sampling and the shares (a tiny real training, in this process)."""
    from ivdseg import cli
    from ivdseg.data.export import ExportOptions, RawCase, export_dataset
    from ivdseg.nn import augment

    mixes = []

    def recording(*args, **kwargs):  # the training's input pipeline, as train() builds it
        mixes.append(kwargs.get("mix"))
        return make_dataset(*args, **kwargs)

    make_dataset = augment.make_dataset
    monkeypatch.setattr(augment, "make_dataset", recording)

    rng = np.random.default_rng(1)
    cases = []
    for i, (source, slices) in enumerate([("large", 6)] * 4 + [("small", 1)] * 4):
        label = np.zeros((slices, 32, 32), np.uint8)
        label[:, 10:14, 8:24] = 1
        cases.append(RawCase(patient=f"p{i}", source=source, label=label,
                             image=rng.random((slices, 32, 32), dtype=np.float32) + label))
    export_dataset(cases, ["intervertebral disc"], tmp_path / "ds", ExportOptions(sizes=(32,), test_fraction=0.25))
    code = cli.main([str(a) for a in ["train", tmp_path / "ds", "-o", tmp_path / "run", "--size", "32", "--depth",
                                      "2", "--base-filters", "4", "--epochs", "1", "--steps-per-epoch", "2",
                                      "--batch-size", "4", "--source-sampling", "equal", "--progress", "text"]])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Training batches draw on the sources large 50%, small 50% (--source-sampling equal)." in out.out + out.err
    training = json.loads((tmp_path / "run" / "model" / "model.json").read_text())["training"]
    assert training["source_sampling"] == "equal" and training["source_shares"] == {"large": 0.5, "small": 0.5}
    assert "- batches drawn from the sources (equal): large 50%, small 50%" in (
        tmp_path / "run" / "model" / "MODEL_CARD.md").read_text()
    groups, shares = mixes[0]
    assert shares == {"large": 0.5, "small": 0.5} and sorted(set(groups)) == ["large", "small"]
    # the split is stratified by source, so both keep as many training patients: one slice against six each
    assert list(groups).count("small") * 6 == list(groups).count("large")

    # the test patients scored again as the package ships, with its test-time augmentation, into the card
    from ivdseg.models.package import read_card, update_card

    package = tmp_path / "run" / "model"
    trained = read_card(package)["test"]
    update_card(package, {"tta": {"enabled": True, "scales": [0.9, 1.0, 1.1]}})
    assert cli.main([str(a) for a in ["evaluate", package, tmp_path / "ds", "--split", "test", "--record"]]) == 0
    card = read_card(package)
    assert card["test_without_tta"] == {**trained, "split": "the same test patients without test-time augmentation"}
    assert card["test"]["split"] == ("splits.json: test patients (chose nothing), with the test-time augmentation the "
                                     "validation patients chose")
    assert card["test"]["per_source"].keys() == trained["per_source"].keys()
    assert cli.main([str(a) for a in ["evaluate", package, tmp_path / "ds", "--split", "test", "--record"]]) == 0
    assert read_card(package)["test_without_tta"] == card["test_without_tta"]  # a second record keeps them
    capsys.readouterr()
    assert cli.main([str(a) for a in ["evaluate", package, tmp_path / "ds", "--split", "val", "--record"]]) == 2
    assert "--record writes the test figures into the card; pass --split test" in capsys.readouterr().err
