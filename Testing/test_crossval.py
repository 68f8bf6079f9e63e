"""Cross-validation end to end on a tiny dataset: leave one source out and patient k-fold, the held-out patients
never trained on, the tables, resuming, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ivdseg import cli
from ivdseg.data import dataset as ds
from ivdseg.data.export import ExportOptions, RawCase, export_dataset
from ivdseg.data.phantom import synthetic_spine_slices
from ivdseg.errors import IvdsegError
from ivdseg.eval.crossval import plan_folds

pytest.importorskip("keras")

TINY = ["--size", "64", "--epochs", "1", "--batch-size", "4", "--depth", "3", "--base-filters", "8",
        "--no-augment", "--progress", "none"]


def _cases(patients_per_source, test_fraction=0.0):
    for source, n in patients_per_source.items():
        for k in range(n):
            image, truth = synthetic_spine_slices(n_slices=3, height=96, width=80, levels=3, seed=7 * k + len(source))
            yield RawCase(patient=f"{source}-{k}", source=source, image=image, label=truth)


def _dataset(path, patients_per_source, test_fraction=0.0):
    options = ExportOptions(sizes=(64,), val_fraction=0.34, test_fraction=test_fraction)
    export_dataset(_cases(patients_per_source), ["intervertebral disc"], path, options)
    return ds.open_dataset(path)


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("cv") / "ds", {"alpha": 3, "beta": 3, "gamma": 3}, test_fraction=0.3)


def test_leave_one_source_out_plan(three_sources):
    plan = plan_folds(three_sources, "source")
    by_source = three_sources.patients_by_source()
    test = set(three_sources.splits["test"])
    assert [fold["held_out_source"] for fold in plan] == ["alpha", "beta", "gamma"]
    for fold in plan:
        held = set(fold["held_out"])
        assert held == set(by_source[fold["held_out_source"]]) - test  # the whole source, but its test patients
        assert not held & (set(fold["train"]) | set(fold["val"]))
        assert not test & (set(fold["train"]) | set(fold["val"]) | held)  # test chooses nothing, trains nothing
        assert {three_sources.cases[c]["source"] for c in three_sources.cases_of(fold["train"])} == \
            {"alpha", "beta", "gamma"} - {fold["held_out_source"]}


def test_patient_kfold_plan_covers_every_non_test_patient_once(three_sources):
    plan = plan_folds(three_sources, "patient", folds=2, seed=1)
    held = [p for fold in plan for p in fold["held_out"]]
    non_test = sorted(set(p for ps in three_sources.patients_by_source().values() for p in ps)
                      - set(three_sources.splits["test"]))
    assert sorted(held) == non_test and len(held) == len(set(held))
    for fold in plan:
        assert not set(fold["held_out"]) & (set(fold["train"]) | set(fold["val"]))
    assert plan == plan_folds(three_sources, "patient", folds=2, seed=1)


@pytest.mark.parametrize("sources, by, folds, message", [
    ({"alpha": 4}, "source", 5, "one source"),
    ({"alpha": 3, "beta": 1}, "source", 5, "cannot be left out alone"),
    ({"alpha": 2, "beta": 2}, "patient", 5, "at least 5 patients"),
    ({"alpha": 2}, "patient", 2, "no validation patient"),
])
def test_folds_that_cannot_be_made_are_one_sentence(sources, by, folds, message, tmp_path):
    info = _dataset(tmp_path / "ds", sources)
    with pytest.raises(IvdsegError, match=message):
        plan_folds(info, by, folds)


@pytest.fixture(scope="module")
def loso(three_sources, tmp_path_factory):
    """A finished leave-one-source-out run (seed 0), shared by the tests that read it; none of them changes it."""
    out = tmp_path_factory.mktemp("loso") / "seed0"
    assert cli.main(["crossval", str(three_sources.root), "-o", str(out), "--by", "source", *TINY]) == 0
    return out


def test_crossval_by_source_end_to_end_then_resume(three_sources, loso, tmp_path, capsys):
    import shutil

    out = tmp_path / "loso"
    shutil.copytree(loso, out)
    table = json.loads((out / "crossval.json").read_text())
    assert table["complete"] and [f["name"] for f in table["folds"]] == ["without-alpha", "without-beta",
                                                                         "without-gamma"]
    for fold in table["folds"]:
        assert list(fold["held_out"]["per_source"]) == [fold["held_out_source"]]
        assert fold["held_out"]["overall"]["patients"] == fold["patients"]["held_out"] == 2
        card = json.loads((out / fold["package"] / "model.json").read_text())
        assert card["training"]["train_patients"] + card["training"]["val_patients"] == 4
        assert card["test"]["overall"]["dice"] == fold["held_out"]["overall"]["dice"]
        assert "chose nothing" in card["test"]["split"]
    summary = table["summary"]["per_source"]
    assert set(summary) == {"alpha", "beta", "gamma"} and summary["alpha"]["intervertebral disc"]["n"] == 1
    markdown = (out / "crossval.md").read_text()
    assert markdown.count("| without-") == 3 and "mean ± sd" in markdown
    # Resume keeps every finished fold: nothing is trained again.
    stamps = {f: (out / f / "model" / "model.keras").stat().st_mtime_ns for f in ("without-alpha", "without-beta")}
    (out / "without-gamma" / "held_out.json").unlink()
    assert cli.main(["crossval", str(three_sources.root), "-o", str(out), "--by", "source", "--resume", *TINY]) == 0
    assert stamps == {f: (out / f / "model" / "model.keras").stat().st_mtime_ns for f in stamps}
    assert json.loads((out / "crossval.json").read_text())["complete"]
    capsys.readouterr()
    assert cli.main(["crossval", str(three_sources.root), "-o", str(out), *TINY]) == 2
    assert "already holds a cross-validation" in capsys.readouterr().err


def test_crossval_by_patient_end_to_end(three_sources, tmp_path):
    out = tmp_path / "kfold"
    assert cli.main(["crossval", str(three_sources.root), "-o", str(out), "--by", "patient", "--folds", "2",
                     *TINY]) == 0
    table = json.loads((out / "crossval.json").read_text())
    held = sum(f["patients"]["held_out"] for f in table["folds"])
    assert held == 6 and len(table["folds"]) == 2  # 9 patients, 3 of them test: in no fold
    dice = [f["held_out"]["overall"]["dice"]["intervertebral disc"] for f in table["folds"]]
    spread = table["summary"]["overall"]["intervertebral disc"]
    assert spread["mean"] == pytest.approx(np.mean(dice), abs=1e-4) and spread["n"] == 2


def test_a_second_stage_starts_each_fold_from_its_own_fold_of_the_first(three_sources, loso, tmp_path, capsys,
                                                                        monkeypatch):
    from ivdseg.nn import train as train_module

    stage1 = loso
    starts = {}
    real_train = train_module.train

    def recording_train(dataset, run, cfg, *args, **kwargs):
        starts[run.name] = cfg.init_from
        return real_train(dataset, run, cfg, *args, **kwargs)

    monkeypatch.setattr(train_module, "train", recording_train)
    stage2 = tmp_path / "stage2"
    assert cli.main(["crossval", str(three_sources.root), "-o", str(stage2), "--init-from", str(stage1), *TINY]) == 0
    assert starts == {f: str(stage1 / f / "model") for f in ("without-alpha", "without-beta", "without-gamma")}
    table = json.loads((stage2 / "crossval.json").read_text())
    assert table["complete"] and table["init_from_crossval"] == loso.name
    capsys.readouterr()
    # One package for every fold could have seen the held-out patients; folds that differ cannot be matched.
    assert cli.main(["crossval", str(three_sources.root), "-o", str(tmp_path / "x"), "--init-from",
                     str(stage1 / "without-alpha" / "model"), *TINY]) == 2
    assert "a single model package may have been trained on the patients a fold holds out" in capsys.readouterr().err
    assert cli.main(["crossval", str(three_sources.root), "-o", str(tmp_path / "y"), "--by", "patient", "--folds", "2",
                     "--init-from", str(stage1), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"--init-from {stage1} was cross-validated by source, this run is by patient" in err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_the_card_of_a_final_training_keeps_the_cross_validation(three_sources, loso, tmp_path, capsys):
    out = loso
    run = tmp_path / "final"
    assert cli.main(["train", str(three_sources.root), "-o", str(run), "--crossval", str(out / "crossval.json"),
                     *TINY]) == 0
    card = json.loads((run / "model" / "model.json").read_text())
    assert [f["name"] for f in card["crossval"]["folds"]] == ["without-alpha", "without-beta", "without-gamma"]
    assert str(out.parent) not in json.dumps(card["crossval"])
    assert card["test"]["overall"]["patients"] == 3  # the dataset's test patients, scored once
    markdown = (run / "model" / "MODEL_CARD.md").read_text()
    assert "Leave one source out" in markdown and "## Test" in markdown
    (tmp_path / "not-crossval.json").write_text('{"folds": 3}')
    capsys.readouterr()
    assert cli.main(["train", str(three_sources.root), "-o", str(tmp_path / "x"), "--crossval",
                     str(tmp_path / "not-crossval.json"), *TINY]) == 2
    assert "is not the crossval.json" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_ensemble_of_two_seeds_is_cross_validated_fold_by_fold(three_sources, loso, tmp_path, capsys):
    """Each fold's package averages the same fold's models of both runs (checked on the saved package and its ONNX
    copy), is scored on that fold's held-out patients, and the tables are those of a cross-validation."""
    from ivdseg.models.package import load_package

    seed1 = tmp_path / "seed1"
    assert cli.main(["crossval", str(three_sources.root), "-o", str(seed1), "--seed", "1", *TINY]) == 0
    out = tmp_path / "ensemble"
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(out), "--crossvals", str(loso), str(seed1),
                     "--progress", "none"]) == 0
    table = json.loads((out / "crossval.json").read_text())
    assert table["complete"] and table["config"]["network"] == "ensemble of 2"
    assert table["config"]["members"] == ["seed0", "seed1"] and "mean ± sd" in (out / "crossval.md").read_text()
    x = np.random.default_rng(0).random((2, 64, 64, 1), dtype=np.float32)
    for fold in table["folds"]:
        assert fold["held_out"]["overall"]["patients"] == fold["patients"]["held_out"] == 2
        model, card = load_package(out / fold["package"])  # safe mode
        assert card["network"] == "ensemble" and [m["seed"] for m in card["ensemble"]] == [0, 1]
        assert card["training"]["test_patients"] == 2 and "chose nothing" in card["test"]["split"]
        members = [load_package(run / fold["name"] / "model")[0] for run in (loso, seed1)]
        mean = np.mean([np.asarray(m(x, training=False)) for m in members], axis=0)
        np.testing.assert_allclose(np.asarray(model(x, training=False)), mean, atol=1e-5)
        if (out / fold["package"] / "model.onnx").is_file():
            import onnxruntime as ort

            session = ort.InferenceSession(str(out / fold["package"] / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
            onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
            np.testing.assert_allclose(onnx_out, mean, atol=1e-4)
        assert "onnx" in card["backends"]  # the nested network exports
    # the --members form: two trainings on the dataset's own split, averaged, scored on its test patients once
    runs = [tmp_path / f"train{seed}" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        assert cli.main(["train", str(three_sources.root), "-o", str(run), "--seed", str(seed), *TINY]) == 0
    package = tmp_path / "pair"
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(package), "--progress", "none", "--members",
                     *(str(run / "model") for run in runs)]) == 0
    card = json.loads((package / "model.json").read_text())
    assert card["test"]["overall"]["patients"] == card["training"]["test_patients"] == 3
    markdown = (package / "MODEL_CARD.md").read_text()
    assert "validation" in card and "## Ensemble" in markdown and "None lr None" not in markdown
    capsys.readouterr()
    # a fold's model may hold other patients out than the dataset's split: not a member of a --members ensemble
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(tmp_path / "d"), "--members",
                     str(loso / "without-alpha" / "model"), str(runs[0] / "model")]) == 2
    assert "was not trained on this dataset's own split" in capsys.readouterr().err
    # an occupied folder that is no package is never replaced
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(tmp_path / "notes"), "--members",
                     *(str(run / "model") for run in runs), "--overwrite"]) == 2
    assert "is not a model package" in capsys.readouterr().err and (tmp_path / "notes" / "keep.txt").exists()
    # by patient, folds dealt with another seed hold other patients: refused
    kfold = tmp_path / "kfold"
    assert cli.main(["crossval", str(three_sources.root), "-o", str(kfold), "--by", "patient", "--folds", "2",
                     *TINY]) == 0
    capsys.readouterr()
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(tmp_path / "e"), "--by", "patient", "--folds",
                     "2", "--seed", "1", "--crossvals", str(kfold), str(kfold)]) == 2
    assert "dealt its patient folds with --seed 0, this run with 1" in capsys.readouterr().err
    # refusals: one member, folds that are not these, an occupied folder, members of another input
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(tmp_path / "a"), "--crossvals", str(loso)]) == 2
    assert "at least two" in capsys.readouterr().err
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(tmp_path / "b"), "--by", "patient", "--folds",
                     "2", "--crossvals", str(loso), str(seed1)]) == 2
    assert f"--crossvals {loso} was cross-validated by source, this run is by patient" in capsys.readouterr().err
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(out), "--crossvals", str(loso), str(seed1)]) == 2
    assert "already holds a cross-validation" in capsys.readouterr().err
    import shutil

    other = tmp_path / "other"
    shutil.copytree(runs[1] / "model", other)
    wider = {**json.loads((other / "model.json").read_text()), "input_size": 128}
    (other / "model.json").write_text(json.dumps(wider))
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(tmp_path / "c"), "--members",
                     str(runs[0] / "model"), str(other)]) == 2
    err = capsys.readouterr().err
    assert "differs from" in err and "'input_size'" in err and err.count("\n") == 1
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c", "d", "e"))


def test_an_ensemble_card_keeps_what_every_member_shares_and_nothing_one_member_chose():
    from ivdseg.models.ensemble import check_members, dropped_entries, ensemble_card

    def member(seed, threshold, tta_gain, licence="CC BY 4.0"):
        return {"name": f"m{seed}", "version": "1.0.0", "network": "unet2d", "input_size": 256, "channels": 1,
                "normalization": {"method": "percentile"}, "slice_plane": "sagittal", "classes": [{"name": "disc"}],
                "context_slices": None if seed == 0 else 0, "licence": licence,
                "training_data_licences": {"spider": "CC BY 4.0"}, "training": {"seed": seed},
                "instances": {"disc": {"rule": "spine levels", "anchor_model": "locator",
                                       "review_threshold": threshold}},
                "tta": {"enabled": True, "scales": [0.9, 1.0, 1.1], "val_mean_dice_with": tta_gain},
                "crossval": {"by": "source"}, "keypoint_model": "centres"}

    cards = [member(0, 0.27, 0.86), member(1, 0.31, 0.87)]
    check_members(cards, ["a", "b"])  # no context_slices and 0 mean the same input
    card = ensemble_card(cards, "both", "1.0.0", "ivdseg ensemble ...")
    assert card["instances"] == {"disc": {"rule": "spine levels", "anchor_model": "locator"}}
    assert card["tta"] == {"enabled": True, "scales": [0.9, 1.0, 1.1], "chosen_by": "every member's own validation"}
    assert card["training_data_licences"] == {"spider": "CC BY 4.0"} and card["licence"] == "CC BY 4.0"
    assert card["keypoint_model"] == "centres" and dropped_entries(cards, card) == []
    other = [cards[0], member(1, 0.31, 0.87, licence="GPL-3.0")]
    other[1]["tta"]["scales"] = [1.0]
    card = ensemble_card(other, "both", "1.0.0", "ivdseg ensemble ...")
    assert "tta" not in card and card["licence"] == "unspecified"
    with pytest.raises(IvdsegError, match="named twice"):
        check_members(cards, ["a", "a"])
