"""The bundled model end to end on real data: the demo's Dice floor, both backends, the card."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from conftest import ROOT, require_data

from ivdseg.models.package import read_card, resolve_model
from ivdseg.progress import parse_events

# The demo case (case25) is a test patient of the bundled model: it chose nothing (not the checkpoint, not the
# schedule, not the post-processing). It reaches 0.883 (measured, with the card's test-time augmentation); the
# floor leaves room for CPU/BLAS rounding, not for a worse model.
DEMO_DICE_FLOOR = 0.85


SOURCES = {"spider", "ivd_lumbar_t2", "spine_2d_disc_vertebra"}


def test_card_is_complete():
    """What the card must state: test Dice per source with its patient counts, leave-one-source-out Dice,
    parameters, input size, the inference time of a 67-slice volume, and how to reproduce it."""
    card = read_card(resolve_model())
    assert card["name"] == "ivd-disc-2d" and card["version"] == "2.1.0" and card["input_size"] == 256
    assert card["preprocessing"]["resize"] == "pad"
    assert [c["name"] for c in card["classes"]] == ["intervertebral disc"]
    assert card["classes"][0]["terminology"]["type"][1] == "360499006"
    test = card["test"]
    assert set(test["per_source"]) == SOURCES and "chose nothing" in test["split"]
    assert {s: v["patients"] for s, v in test["per_source"].items()} == {
        "spider": 5, "ivd_lumbar_t2": 1, "spine_2d_disc_vertebra": 2}
    assert test["overall"]["dice"]["intervertebral disc"] > 0.85
    assert set(card["validation"]["per_source"]) == SOURCES
    loso = card["crossval"]
    assert loso["by"] == "source" and loso["complete"]
    assert {f["held_out_source"] for f in loso["folds"]} == SOURCES
    assert 1e6 < card["architecture"]["parameters"] < 5e6
    timing = card["inference_time"]
    assert timing["volume"].startswith("67 sagittal slices") and timing["backends"]["onnx"]["process_seconds"] > 0
    assert any("Resources/recipes/" in line for line in card["reproduce"])
    assert card["citations"] and card["licence"]
    assert (resolve_model() / "model.onnx").is_file()
    size = sum(f.stat().st_size for f in resolve_model().iterdir())
    assert size < 20e6  # each package stays at most ~20 MB


def test_demo_reaches_its_dice_floor(tmp_path):
    require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "IVDSegmentation"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-m", "ivdseg", "demo", "--output-dir", str(tmp_path / "demo"),
                           "--progress", "jsonl"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    done = parse_events(proc.stdout.splitlines())[-1]
    assert done["event"] == "done" and done["dice"] >= DEMO_DICE_FLOOR, done
    assert (tmp_path / "demo" / "case25_discs.nii.gz").is_file()
    assert (tmp_path / "demo" / "case25_overlay.png").stat().st_size > 1000
    sidecar = json.loads((tmp_path / "demo" / "case25_discs.nii.gz.json").read_text())
    assert sidecar["labels"][0]["name"] == "intervertebral disc"
    assert 5 < done["volumes_ml"]["intervertebral disc"] < 60  # five lumbar discs, a few mL each


def test_backends_give_the_same_probabilities_on_real_slices():
    """The ONNX copy is the same function as the Keras model: probabilities, not just argmax labels (which an
    untrained or saturated net could share by chance), on real MRI slices through the discs."""
    from ivdseg.inference.backends import load_backend
    from ivdseg.inference.predict import prepare_slices
    from ivdseg.io.geometry import sagittal_slices
    from ivdseg.io.volumes import read_volume

    stack, _ = sagittal_slices(read_volume(require_data("ivd_lumbar_t2/nifti/case25_T2w.nii.gz")))
    middle = len(stack) // 2
    tf_backend = load_backend(resolve_model(), "tensorflow", "cpu")
    onnx_backend = load_backend(resolve_model(), "onnx", "cpu")
    batch = prepare_slices(stack[middle - 4:middle + 4], tf_backend.card)
    a, b = tf_backend.predict(batch), onnx_backend.predict(batch)
    assert a.shape == b.shape == (8, 256, 256, 2)
    assert 0.005 < (a[..., 1] > 0.5).mean() < 0.2  # the slices show discs: the comparison covers both classes
    assert np.abs(a - b).max() < 1e-4  # measured 3e-6 on CPU


def _backend(load_backend, name):
    backend = load_backend(resolve_model(), name, "cpu")
    return backend.predict, backend.card


def test_synthetic_spine_is_found():
    """The synthetic spine of the Slicer self-test is segmented (what the self-test relies on)."""
    from ivdseg.inference.backends import load_backend
    from ivdseg.data.phantom import synthetic_spine_volume
    from ivdseg.inference.segment import segment_volume

    image, truth = synthetic_spine_volume()
    result = segment_volume(image, *_backend(load_backend, "onnx"))
    p, t = result.labelmap.array > 0, truth.array > 0
    assert 2 * (p & t).sum() / (p.sum() + t.sum()) > 0.5


def test_the_lumbosacral_locator_is_bundled_and_named_by_the_disc_model():
    """The disc model names its levels from the bundled locator; the locator's card reports its test patients."""
    from ivdseg.inference.levels import level_support

    _, rule = level_support(read_card(resolve_model()))
    assert rule["anchor_model"] == "ivd-lumbosacral-2d" and 0 < rule["review_threshold"] < 1
    assert "validation discs" in rule["review_chosen_on"]
    locator = resolve_model(rule["anchor_model"])
    card = read_card(locator)
    assert [c["name"] for c in card["classes"]] == ["intervertebral disc", "lumbosacral disc"]
    assert set(card["test"]["per_source"]) == {"spider", "ivd_lumbar_t2"} and "chose nothing" in card["test"]["split"]
    assert (locator / "model.onnx").is_file() and sum(f.stat().st_size for f in locator.iterdir()) < 20e6
