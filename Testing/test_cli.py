"""The command line: bad input ends in exit code 2 and one sentence naming the file, never a traceback."""

from __future__ import annotations

import json
import os
import shlex
import stat

import cv2
import nibabel as nib
import nrrd
import numpy as np
import pytest

from ivdseg import cli
from ivdseg.data.export import ExportOptions, RawCase, export_dataset


def run_cli(argv, capsys):
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
    code, _, err = run_cli(["export", tmp_path / "d"], capsys)
    assert code == 2 and "needs --spec" in _one_sentence(err)


def test_export_with_no_matching_images(tmp_path, capsys):
    code, _, err = run_cli(["export", tmp_path / "d", "--images", str(tmp_path / "none*.png"), "--labels", "{stem}.npy",
                        "--kind", "slices", "--class", "disc=1"], capsys)
    assert code == 2 and "No image matches" in _one_sentence(err)
    assert not (tmp_path / "d").exists()


def test_export_bad_spec(tmp_path, capsys):
    (tmp_path / "spec.json").write_text("{not json")
    code, _, err = run_cli(["export", tmp_path / "d", "--spec", tmp_path / "spec.json"], capsys)
    assert code == 2 and "spec.json is not readable JSON" in _one_sentence(err)


def test_export_existing_folder(dataset, capsys):
    code, _, err = run_cli(["export", dataset, "--images", "x", "--labels", "y", "--class", "disc=1"], capsys)
    assert code == 2 and "already exists" in _one_sentence(err)


def test_train_on_unknown_format_version(dataset, tmp_path, capsys):
    meta = json.loads((dataset / "dataset.json").read_text())
    meta["format_version"] = 7
    (dataset / "dataset.json").write_text(json.dumps(meta))
    code, _, err = run_cli(["train", dataset, "-o", tmp_path / "run", "--size", "32", "--progress", "text"], capsys)
    assert code == 2 and "format version 7" in _one_sentence(err)


def test_train_on_missing_size(dataset, tmp_path, capsys):
    code, _, err = run_cli(["train", dataset, "-o", tmp_path / "run", "--size", "256", "--progress", "text"], capsys)
    assert code == 2 and "has no 256 px copy" in _one_sentence(err)


def test_error_is_also_a_json_event(dataset, tmp_path, capsys):
    code, out, err = run_cli(["train", tmp_path / "nope", "-o", tmp_path / "run", "--progress", "jsonl"], capsys)
    assert code == 2 and "is not a folder" in _one_sentence(err)
    event = json.loads(out.strip().splitlines()[-1])
    assert event["event"] == "error" and "is not a folder" in event["message"]


def test_evaluate_with_missing_model(dataset, tmp_path, capsys):
    code, _, err = run_cli(["evaluate", tmp_path / "no-model", dataset], capsys)
    assert code == 2 and "No model package at" in _one_sentence(err)


def _exit_code(argv, capsys):
    """Exit code and stderr of the command; argparse's own exit (SystemExit) counts like a returned code."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def slices(tmp_path):
    """Two patients' PNG slices with labels: a source that exports, so only the option under test can fail."""
    for folder in ("img", "lab"):
        (tmp_path / folder).mkdir()
    for patient in ("3", "12"):
        for k in range(2):
            cv2.imwrite(str(tmp_path / "img" / f"{patient}_slice{k}.png"), np.full((32, 32), 50 + k, np.uint8))
            label = np.zeros((32, 32), np.uint8)
            label[8:16, 8:20] = 1
            cv2.imwrite(str(tmp_path / "lab" / f"{patient}_slice{k}.png"), label)
    return tmp_path


def _export_argv(t, *extra):
    return ["export", t / "out", "--images", str(t / "img" / "*.png"), "--labels", str(t / "lab" / "{name}"),
            "--kind", "slices", "--patient-pattern", r"^(\d+)_", "--class", "disc=1", "--sizes", "32",
            "--val-fraction", "0.5", "--pseudonym-key-file", t / "key.bin", "--progress", "none", *extra]


def _train_argv(t, d, *extra):
    return ["train", d, "-o", t / "run", "--size", "32", "--progress", "none", *extra]


def _write(path, text):
    path.write_text(text)
    return path


def _degenerate_nifti(path):
    image = nib.Nifti1Image(np.zeros((16, 16, 4), np.int16), np.eye(4))
    image.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # the j axis has no length
    image.set_qform(None, code=0)
    nib.save(image, str(path))
    return path


def _sagittal_nrrd(path):
    nrrd.write(str(path), np.zeros((16, 16, 4), np.int16),
               {"space": "left-posterior-superior", "space directions": np.array([[0, 1.0, 0], [0, 0, 1.0], [3.0, 0, 0]])})
    return path


def _zero_direction_nrrd(path):
    nrrd.write(str(path), np.zeros((16, 16, 4), np.int16),
               {"space": "left-posterior-superior", "space directions": np.array([[1.0, 0, 0], [0, 0, 0], [0, 0, 1]])})
    return path


# (id, argv builder (tmp folder, dataset) -> argv, words the one sentence must hold)
MISTAKES = [
    ("val-fraction-0", lambda t, d: _export_argv(t, "--val-fraction", "0"), "--val-fraction"),
    ("val-fraction-1.5", lambda t, d: _export_argv(t, "--val-fraction", "1.5"), "--val-fraction"),
    ("test-fraction-negative", lambda t, d: _export_argv(t, "--test-fraction", "-0.1"), "--test-fraction"),
    ("test-fraction-leaves-no-training", lambda t, d: _export_argv(t, "--test-fraction", "0.5"), "--test-fraction"),
    ("kfold-1", lambda t, d: _export_argv(t, "--kfold", "1"), "--kfold"),
    ("kfold-negative", lambda t, d: _export_argv(t, "--kfold", "-2"), "--kfold"),
    ("sizes-not-16", lambda t, d: _export_argv(t, "--sizes", "32,100"), "--sizes"),
    ("sizes-8", lambda t, d: _export_argv(t, "--sizes", "8"), "--sizes"),
    ("sizes-not-integers", lambda t, d: _export_argv(t, "--sizes", "a,b"), "--sizes"),
    ("class-without-values", lambda t, d: _export_argv(t, "--class", "disc"), "--class"),
    ("key-in-missing-folder", lambda t, d: _export_argv(t, "--pseudonym-key-file", t / "nowhere" / "k.bin"),
     "--pseudonym-key-file"),
    ("spec-not-json", lambda t, d: ["export", t / "out", "--spec", _write(t / "s.json", "{oops"),
                                    "--pseudonym-key-file", t / "key.bin"], "--spec"),
    ("spec-json-list", lambda t, d: ["export", t / "out", "--spec", _write(t / "s.json", "[1, 2]"),
                                     "--pseudonym-key-file", t / "key.bin"], "not the JSON object"),
    ("spec-without-sources", lambda t, d: ["export", t / "out", "--spec",
                                           _write(t / "s.json", '{"classes": ["disc"], "sources": ["x"]}'),
                                           "--pseudonym-key-file", t / "key.bin"], "'sources'"),
    ("train-keep-best-0", lambda t, d: _train_argv(t, d, "--keep-best", "0"), "--keep-best"),
    ("train-epochs-0", lambda t, d: _train_argv(t, d, "--epochs", "0"), "--epochs"),
    ("train-batch-size-0", lambda t, d: _train_argv(t, d, "--batch-size", "0"), "--batch-size"),
    ("train-patience-0", lambda t, d: _train_argv(t, d, "--patience", "0"), "--patience"),
    ("train-learning-rate-0", lambda t, d: _train_argv(t, d, "--learning-rate", "0"), "--learning-rate"),
    ("train-learning-rate-negative", lambda t, d: _train_argv(t, d, "--learning-rate", "-0.1"), "--learning-rate"),
    ("train-steps-0", lambda t, d: _train_argv(t, d, "--steps-per-epoch", "0"), "--steps-per-epoch"),
    ("train-dropout-1", lambda t, d: _train_argv(t, d, "--dropout", "1"), "--dropout"),
    ("train-size-lacking", lambda t, d: ["train", d, "-o", t / "run", "--size", "64", "--progress", "none"],
     "--size 64"),
    ("train-fold-missing", lambda t, d: _train_argv(t, d, "--fold", "0"), "fold 0"),
    ("train-fold-negative", lambda t, d: _train_argv(t, d, "--fold", "-1"), "--fold"),
    ("train-network-depth", lambda t, d: _train_argv(t, d, "--network", "deeplabv3plus", "--depth", "3"),
     "--network deeplabv3plus"),
    ("train-card-list", lambda t, d: _train_argv(t, d, "--card", _write(t / "c.json", "[]")), "--card"),
    ("train-init-from-missing", lambda t, d: _train_argv(t, d, "--init-from", t / "no-package"), "no-package"),
    ("segment-batch-size-0", lambda t, d: ["segment", _sagittal_nrrd(t / "v.nrrd"), "-o", t / "seg.nii.gz",
                                           "--batch-size", "0", "--progress", "none"], "--batch-size"),
    ("segment-degenerate-nifti", lambda t, d: ["segment", _degenerate_nifti(t / "flat.nii.gz"), "-o",
                                               t / "seg.nii.gz", "--progress", "none"], "flat.nii.gz has a degenerate"),
    ("segment-zero-direction-nrrd", lambda t, d: ["segment", _zero_direction_nrrd(t / "v.nrrd"), "-o",
                                                  t / "seg.nii.gz", "--progress", "none"], "v.nrrd has a degenerate"),
    ("evaluate-batch-size-0", lambda t, d: ["evaluate", "ivd-disc-2d", d, "--batch-size", "0"], "--batch-size"),
    ("evaluate-no-test-patients", lambda t, d: ["evaluate", "ivd-disc-2d", d, "--split", "test"], "--test-fraction"),
]


@pytest.mark.parametrize("build, words", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_command_line_mistakes_end_in_one_sentence_and_write_nothing(build, words, slices, dataset, capsys):
    t = slices
    code, err = _exit_code(build(t, dataset), capsys)
    line = _one_sentence(err)
    assert code == 2 and words in line, err
    for output in ("out", "key.bin", "run", "seg.nii.gz", "nowhere"):
        assert not (t / output).exists(), output
    assert not list(t.glob(".*"))  # no staging folder or temporary file either


def test_the_mistakes_table_starts_from_a_working_export(slices, capsys):
    """The control of the table above: without the bad option, the same export succeeds."""
    code, err = _exit_code(_export_argv(slices), capsys)
    assert code == 0, err
    assert (slices / "out" / "dataset.json").is_file() and (slices / "key.bin").is_file()


# ------------------------------------------------------------------ pseudonym key file
def _case_ids(folder):
    return sorted(json.loads((folder / "dataset.json").read_text())["cases"])


def test_new_key_file_is_private_and_gives_the_same_pseudonyms_again(slices, capsys):
    assert _exit_code(_export_argv(slices), capsys)[0] == 0
    key = slices / "key.bin"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert len(key.read_bytes()) == 32
    first = _case_ids(slices / "out")
    (slices / "out").rename(slices / "first")
    assert _exit_code(_export_argv(slices), capsys)[0] == 0
    assert _case_ids(slices / "out") == first  # the same key file, the same pseudonyms
    key.unlink()
    (slices / "out").rename(slices / "second")
    assert _exit_code(_export_argv(slices), capsys)[0] == 0
    assert set(_case_ids(slices / "out")).isdisjoint(first)  # a new key, new pseudonyms


@pytest.mark.parametrize("content", [b"", b"short key"], ids=["empty", "9-bytes"])
def test_empty_or_short_key_file_is_refused(slices, content, capsys):
    (slices / "key.bin").write_bytes(content)
    code, err = _exit_code(_export_argv(slices), capsys)
    assert code == 2 and f"holds {len(content)} bytes, fewer than 16" in _one_sentence(err)
    assert (slices / "key.bin").read_bytes() == content  # never replaced by a new random key
    assert not (slices / "out").exists()


def test_failed_export_removes_the_key_it_created(slices, capsys):
    code, err = _exit_code(_export_argv(slices, "--images", str(slices / "none*.png")), capsys)
    assert code == 2 and "No image matches" in _one_sentence(err)
    assert not (slices / "key.bin").exists() and not (slices / "out").exists()


# ------------------------------------------------------------------ warnings
def test_series_lists_the_good_series_and_warns_once_about_a_damaged_file(tmp_path, capsys):
    from dicom_builders import OBLIQUE_IOP, _series

    _series(tmp_path / "a", series_uid="1.2.3.4")
    _series(tmp_path / "b", series_uid="1.2.3.5", iop=OBLIQUE_IOP)
    victim = tmp_path / "b" / "slice2.dcm"
    victim.write_bytes(victim.read_bytes()[:200])
    code = cli.main(["series", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0
    assert "1.2.3.4" in out and "1.2.3.5" in out
    line = _one_sentence(err)
    assert line.startswith("ivdseg series: warning: ") and "slice2.dcm" in line


# ------------------------------------------------------------------ train --resume
def _run_state(run, config=None, state_text=None):
    """A run folder as an interrupted training leaves it (no training needed to test the refusals)."""
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.keras").write_bytes(b"not a keras file")
    if state_text is None and config is not None:
        state_text = json.dumps({"epoch": 2, "best": [[0.5, 2, "best-e002.keras"]], "config": config})
    if state_text is not None:
        (run / "checkpoints" / "state.json").write_text(state_text)
    return run


def _saved_config(**changes):
    from dataclasses import asdict

    from ivdseg.nn.train import TrainConfig

    config = {**asdict(TrainConfig(size=32)), "classes": ["background", "intervertebral disc"]}
    return {**config, **changes}


@pytest.mark.parametrize("changes, words", [
    ({"size": 64}, "trained with --size 64 but this run asks for --size 32"),
    ({"network": "res_se_unet", "depth": 3}, "--network res_se_unet, --depth 3 but this run asks for "
                                             "--network unet2d, --depth 4"),
    ({"base_filters": 8}, "--base-filters 8"),
    ({"activation": "mish"}, "--activation mish"),
    ({"source_sampling": "equal"}, "trained with --source-sampling equal but this run asks for --source-sampling slices"),
    ({"classes": ["background", "vertebra"]}, "the dataset's classes ['background', 'vertebra']"),
])
def test_resume_refuses_a_different_configuration(dataset, tmp_path, capsys, changes, words):
    run = _run_state(tmp_path / "run", _saved_config(**changes))
    before = sorted(p.name for p in run.rglob("*"))
    code, _, err = run_cli(["train", dataset, "-o", run, "--size", "32", "--resume", "--progress", "none"], capsys)
    assert code == 2 and words in _one_sentence(err)
    assert sorted(p.name for p in run.rglob("*")) == before  # nothing written, nothing removed


@pytest.mark.parametrize("state_text, words", [
    (None, "state.json is missing"),
    ("{broken", "state.json is not readable"),
    ("[1, 2]", "is not a training state"),
    ('{"epoch": 1}', "is not a training state"),
])
def test_resume_without_a_readable_state_is_one_sentence(dataset, tmp_path, capsys, state_text, words):
    run = _run_state(tmp_path / "run", state_text=state_text)
    code, _, err = run_cli(["train", dataset, "-o", run, "--size", "32", "--resume", "--progress", "none"], capsys)
    assert code == 2 and words in _one_sentence(err)
    assert not (run / "config.json").exists()


def test_resume_with_the_same_configuration_reaches_the_checkpoint(dataset, tmp_path, capsys):
    run = _run_state(tmp_path / "run", _saved_config(epochs=3, learning_rate=0.01))  # others may differ
    code, _, err = run_cli(["train", dataset, "-o", run, "--size", "32", "--resume", "--progress", "none"], capsys)
    assert code == 2 and "checkpoints/last.keras does not load" in _one_sentence(err)


# ------------------------------------------------------------------ the card's training command
def test_reproduce_command_has_no_path_and_parses_back_to_the_same_settings():
    from ivdseg.nn.train import TrainConfig, reproduce_command

    cfg = TrainConfig(network="res_se_unet", size=192, activation="mish", depth=3, base_filters=8, dropout=0.1,
                      epochs=7, learning_rate=3e-4, steps_per_epoch=20, fold=2, augment=False,
                      source_sampling="sqrt", init_from="/home/jane.doe/models/ivd-disc-2d", name="my model",
                      version="2.0.0")
    command = reproduce_command(cfg, "/home/jane.doe/card.json")
    assert "/" not in command and "jane" not in command
    assert command.startswith("ivdseg train DATASET -o RUN --network res_se_unet --size 192 ")
    assert "--init-from ivd-disc-2d" in command and command.endswith("--card card.json")
    args = cli.build_parser().parse_args(shlex.split(command)[1:])
    again = TrainConfig(network=args.network, size=args.size, activation=args.activation, depth=args.depth,
                        base_filters=args.base_filters, dropout=args.dropout, loss=args.loss, epochs=args.epochs,
                        batch_size=args.batch_size, learning_rate=args.learning_rate,
                        steps_per_epoch=args.steps_per_epoch, patience=args.patience, keep_best=args.keep_best,
                        seed=args.seed, fold=args.fold, augment=not args.no_augment,
                        source_sampling=args.source_sampling, mixed_precision=args.mixed_precision, init_from=args.init_from, name=args.name,
                        version=args.model_version)
    assert again == TrainConfig(**{**cfg.__dict__, "init_from": "ivd-disc-2d"})


def test_a_source_sampling_the_command_line_does_not_offer_is_refused_in_one_sentence():
    from ivdseg.errors import IvdsegError
    from ivdseg.nn.train import TrainConfig, check_config

    with pytest.raises(IvdsegError, match="--source-sampling must be one of slices, sqrt, equal, got 'uniform'"):
        check_config(TrainConfig(source_sampling="uniform"))
