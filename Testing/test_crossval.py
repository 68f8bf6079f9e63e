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
pytestmark = pytest.mark.usefixtures("eager_training")  # folds and tables, not the graph: see conftest

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
    assert markdown.count("| without-") == 3 and "mean ± sd" in markdown and "predicted / true size" in markdown
    for fold in table["folds"]:
        ratio = fold["held_out"]["overall"]["volume_ratio"]["intervertebral disc"]
        assert f"| {fold['name']} | {fold['held_out_source']} | 2 | " in markdown and f"{ratio:.2f} |" in markdown
    # Resume keeps every finished fold: nothing is trained again.
    stamps = {f: (out / f / "model" / "model.keras").stat().st_mtime_ns for f in ("without-alpha", "without-beta")}
    (out / "without-gamma" / "held_out.json").unlink()
    assert cli.main(["crossval", str(three_sources.root), "-o", str(out), "--by", "source", "--resume", *TINY]) == 0
    assert stamps == {f: (out / f / "model" / "model.keras").stat().st_mtime_ns for f in stamps}
    assert json.loads((out / "crossval.json").read_text())["complete"]
    capsys.readouterr()
    assert cli.main(["crossval", str(three_sources.root), "-o", str(out), *TINY]) == 2
    assert "already holds a cross-validation" in capsys.readouterr().err
    # Resumed with another setting, the kept folds would make one table of two experiments: refused, nothing trained.
    wider = [*TINY[:TINY.index("--base-filters")], "--base-filters", "12", *TINY[TINY.index("--base-filters") + 2:]]
    (out / "without-gamma" / "held_out.json").unlink()
    assert cli.main(["crossval", str(three_sources.root), "-o", str(out), "--by", "source", "--resume", *wider]) == 2
    assert ("its fold without-alpha was trained with --base-filters 8, this run asks for --base-filters 12"
            in capsys.readouterr().err)
    assert not (out / "without-gamma" / "held_out.json").exists()
    assert stamps == {f: (out / f / "model" / "model.keras").stat().st_mtime_ns for f in stamps}


def test_crossval_by_patient_end_to_end(three_sources, tmp_path, capsys):
    out = tmp_path / "kfold"
    assert cli.main(["crossval", str(three_sources.root), "-o", str(out), "--by", "patient", "--folds", "2",
                     *TINY]) == 0
    table = json.loads((out / "crossval.json").read_text())
    held = sum(f["patients"]["held_out"] for f in table["folds"])
    assert held == 6 and len(table["folds"]) == 2  # 9 patients, 3 of them test: in no fold
    dice = [f["held_out"]["overall"]["dice"]["intervertebral disc"] for f in table["folds"]]
    spread = table["summary"]["overall"]["intervertebral disc"]
    assert spread["mean"] == pytest.approx(np.mean(dice), abs=1e-4) and spread["n"] == 2
    # folds dealt with another seed hold other patients: no ensemble of them with this seed's folds
    capsys.readouterr()
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(tmp_path / "e"), "--by", "patient", "--folds",
                     "2", "--seed", "1", "--crossvals", str(out), str(out)]) == 2
    assert "dealt its patient folds with --seed 0, this run with 1" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


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


def test_a_class_no_training_source_labels_is_untrained_not_a_figure():
    """Left out by source, SPIDER is the only source that labels the canal: the fold without it never learnt the
    canal, so its canal Dice is shown as untrained and left out of the means (the crossval table and the card)."""
    from ivdseg.eval.crossval import _table, summarize
    from ivdseg.models.card import render, untrained_classes

    classes = ["intervertebral disc", "spinal canal"]
    sources = {"spider": {"labelled_classes": classes}, "fmrp": {"labelled_classes": ["intervertebral disc"]},
               "third": {"labelled_classes": ["intervertebral disc"]}}

    def fold(held_out, disc, canal):
        scores = {"dice": {"intervertebral disc": disc, "spinal canal": canal}, "patients": 2,
                  "volume_ratio": {}, "dice_patient_mean": {}}
        return {"name": f"without-{held_out}", "held_out_source": held_out, "patients": {"held_out": 2},
                "held_out": {"overall": scores, "per_source": {held_out: scores}}}

    folds = [fold("spider", 0.75, 0.15), fold("fmrp", 0.79, None), fold("third", 0.71, None)]
    assert [untrained_classes(f, sources) for f in folds] == [["spinal canal"], [], []]
    assert untrained_classes({"name": "fold-1"}, sources) == []  # by patient: every fold has every source
    summary = summarize(folds, classes, sources)
    assert summary["overall"]["spinal canal"] == {"mean": None, "sd": None, "n": 0}
    assert summary["overall"]["intervertebral disc"]["n"] == 3 and summarize(folds, classes)["overall"][
        "spinal canal"]["mean"] == 0.15  # without the sources, as tables written before this was known
    table = {"by": "source", "dataset_name": "ds", "classes": classes, "config": {"network": "unet2d", "size": 64},
             "sources": sources, "folds": folds, "summary": summary}
    markdown = _table(table)
    assert "| without-spider | spider | 2 | 0.7500 | untrained (0.1500) |" in markdown and "never learnt" in markdown
    card = {"name": "m", "version": "1", "network": "unet2d", "input_size": 64, "channels": 1, "slice_plane": "sagittal",
            "normalization": {}, "classes": [{"value": 1, "name": classes[0]}, {"value": 2, "name": classes[1]}],
            "training": {"sources": sources}, "crossval": {"by": "source", "folds": folds}}
    assert "| without-spider | 2 | 0.7500 | untrained (0.1500) |" in render(card)
    assert "| without-fmrp | 2 | 0.7900 | n/a |" in render(card)
