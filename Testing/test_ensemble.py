"""Ensembles (``ivdseg ensemble``): trained packages averaged into one network, as a package scored on a dataset's
own split or cross-validated fold by fold from earlier cross-validations; and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_crossval import TINY, loso, three_sources  # noqa: F401 - the same module fixtures, made for this file

from ivdseg import cli
from ivdseg.errors import IvdsegError

pytest.importorskip("keras")
pytestmark = pytest.mark.usefixtures("eager_training")  # packages and tables, not the graph: see conftest


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
        assert "weights_storage" not in card  # float32 members: a float32 ensemble
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
    # the --members form: two trainings on the dataset's own split, averaged, scored on its test patients once;
    # members stored as float16 make an ensemble stored as float16 (it holds their weights unchanged)
    runs = [tmp_path / f"train{seed}" for seed in (0, 1)]
    for seed, run in enumerate(runs):
        assert cli.main(["train", str(three_sources.root), "-o", str(run), "--seed", str(seed), "--weights",
                         "float16", *TINY]) == 0
    package = tmp_path / "pair"
    assert cli.main(["ensemble", str(three_sources.root), "-o", str(package), "--progress", "none", "--members",
                     *(str(run / "model") for run in runs)]) == 0
    card = json.loads((package / "model.json").read_text())
    assert card["test"]["overall"]["patients"] == card["training"]["test_patients"] == 3
    assert card["weights_storage"] == "float16"
    pair = load_package(package)[0]
    members = [load_package(run / "model")[0] for run in runs]
    np.testing.assert_allclose(np.asarray(pair(x, training=False)),
                               np.mean([np.asarray(m(x, training=False)) for m in members], axis=0), atol=1e-6)
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
    # (folds by patient dealt with another seed: refused in test_crossval, beside its k-fold run)
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
    assert not any((tmp_path / n).exists() for n in ("a", "b", "c", "d"))


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
