"""Sources that lack a class: the dataset says which, training masks them out of the loss and says so once, and
evaluation does not score a class where its source does not label it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ivdseg import cli
from ivdseg.data import dataset as ds
from ivdseg.data.export import ExportOptions, RawCase, export_dataset
from ivdseg.data.phantom import synthetic_spine_slices
from ivdseg.eval.evaluate import score_predictions

CLASSES = ["intervertebral disc", "vertebra"]


def _cases():
    """Source "full" labels discs (1) and vertebrae (2); source "discs" labels only discs, so its vertebrae are 0."""
    for source, labelled in (("full", tuple(CLASSES)), ("discs", CLASSES[:1])):
        for k in range(4):
            image, truth = synthetic_spine_slices(n_slices=3, height=96, width=80, levels=3, seed=11 * k + len(source))
            label = truth.astype(np.uint8)
            bright = (image > np.percentile(image, 80)) & (label == 0)
            if source == "full":
                label[bright] = 2
            yield RawCase(patient=f"{source}-{k}", source=source, image=image, label=label,
                          labelled_classes=labelled)


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    path = tmp_path_factory.mktemp("partial") / "ds"
    export_dataset(_cases(), CLASSES, path, ExportOptions(sizes=(64,), val_fraction=0.25, test_fraction=0.25))
    return ds.open_dataset(path)


def test_evaluation_does_not_score_a_class_its_source_lacks(partial):
    # A prediction that calls every background pixel "vertebra": an error where vertebrae are labelled only.
    predictions = []
    for case in sorted(partial.cases):
        truth = ds.load_npz(partial.root / "cases" / f"{case}.npz")["label"]
        predictions.append((case, truth, np.where(truth == 0, 2, truth)))
    scores = score_predictions(predictions, partial)
    assert scores["per_source"]["discs"]["dice"] == {"intervertebral disc": 1.0, "vertebra": None}
    assert scores["per_source"]["full"]["dice"]["intervertebral disc"] == 1.0
    assert scores["per_source"]["full"]["dice"]["vertebra"] < 0.5
    assert scores["overall"]["dice"]["vertebra"] == scores["per_source"]["full"]["dice"]["vertebra"]


def test_training_masks_the_missing_class_and_says_so_once(partial, tmp_path, capsys):
    pytest.importorskip("keras")
    code = cli.main([str(a) for a in ["train", partial.root, "-o", tmp_path / "run", "--size", "64", "--epochs", "1",
                                      "--steps-per-epoch", "2", "--batch-size", "4", "--depth", "3",
                                      "--base-filters", "8", "--no-augment", "--progress", "none"]])
    err = capsys.readouterr().err
    assert code == 0, err
    said = [line for line in err.splitlines() if "does not label" in line]
    assert said == ["ivdseg train: warning: Source 'discs' does not label 'vertebra': on its slices those classes "
                    "are left out of the loss (never taught as background)."]
    card = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert [c["name"] for c in card["classes"]] == CLASSES
    for part in ("validation", "test"):
        assert card[part]["per_source"]["discs"]["dice"]["vertebra"] is None
        assert card[part]["per_source"]["full"]["dice"]["vertebra"] is not None


def test_a_class_no_training_slice_shows_is_said_not_a_crash(partial, tmp_path):
    pytest.importorskip("keras")
    from ivdseg.errors import IvdsegWarning
    from ivdseg.nn.train import TrainConfig, train
    from ivdseg.progress import Reporter

    by_source = partial.patients_by_source()
    patients = {"train": by_source["discs"], "val": by_source["full"][:2], "test": by_source["full"][2:]}
    cfg = TrainConfig(size=64, epochs=1, steps_per_epoch=1, batch_size=4, depth=3, base_filters=8, augment=False)
    with pytest.warns(IvdsegWarning) as said:
        package = train(partial.root, tmp_path / "run", cfg, Reporter("none"), patients=patients)
    texts = [str(w.message) for w in said]
    assert "No training slice of this split shows 'vertebra'; the network cannot learn it here, and its Dice " \
           "will be low or missing." in texts
    assert (package / "model.json").exists()


def test_an_unannotated_slice_is_neither_scored_nor_taught_and_training_says_so(tmp_path):
    """A case with no class labelled (listed as unannotated in the export spec): its discs, which nobody drew, are
    not false positives of a model that finds them, and training says it learns nothing from it."""
    from ivdseg.errors import IvdsegWarning
    from ivdseg.nn.train_data import say_unlabelled

    image, truth = synthetic_spine_slices(n_slices=2, height=96, width=80, levels=3, seed=5)
    drawn = RawCase(patient="drawn", source="s", image=image, label=truth.astype(np.uint8),
                    labelled_classes=CLASSES[:1])
    nobody = RawCase(patient="nobody", source="s", image=image, label=np.zeros_like(truth, np.uint8),
                     labelled_classes=())
    info = export_dataset([drawn, nobody], CLASSES[:1], tmp_path / "d", ExportOptions(sizes=(64,), val_fraction=0.5))
    by_patient = {m["patient"]: c for c, m in info.cases.items()}
    assert len(by_patient) == 2
    predictions = []  # the model finds the discs on both: right on the drawn case, unknown on the other
    for case in info.cases:
        label = ds.load_npz(info.root / "cases" / f"{case}.npz")["label"]
        predictions.append((case, label, truth.astype(np.uint8)))
    scores = score_predictions(predictions, info)
    assert scores["overall"]["dice"]["intervertebral disc"] == 1.0
    cases = sorted(info.cases)
    labels = np.concatenate([ds.load_npz(info.root / "64" / f"{case}.npz")["label"] for case in cases])
    with pytest.warns(IvdsegWarning, match="unannotated") as said:
        say_unlabelled(info, cases, info.availability(cases), labels)
    assert [str(w.message) for w in said if "unannotated" in str(w.message)] == [
        "2 training slice(s) of source 's' are unannotated (export spec): they add nothing to the loss."]
    assert not any("does not label" in str(w.message) or "shows" in str(w.message) for w in said)
