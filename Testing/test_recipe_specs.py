"""The export specs of Resources/recipes parse, every file they name is where they say, and the recipes of the
bundled segmentation models are the recipes of those models.

A recipe is run by hand, often in another session; a spec that no longer parses (a key renamed in the exporter) or an
``unannotated`` entry that no longer matches a file would first show as a failed training hours later."""

from argparse import Namespace
from pathlib import Path

import pytest

from conftest import ROOT, require_data, sample_data_dir

SPECS = sorted((ROOT / "Resources" / "recipes").glob("*.export.json"))


def _sources(spec: Path):
    from ivdseg.commands.training import _export_sources

    return _export_sources(Namespace(spec=spec))


def test_recipes_have_export_specs():
    names = {p.name for p in SPECS}
    assert {"ivd-disc-2d.export.json", "ivd-disc-2d-unannotated.export.json", "ivd-spine-2d.export.json"} <= names


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.name)
def test_spec_parses_and_its_files_exist(spec):
    from ivdseg.data.sources import _source_files

    classes, sources, _ = _sources(spec)
    for source in sources:
        assert set(source.class_map) <= set(classes), f"{source.name} maps a class the spec does not list"
        if source.kind not in ("slices", "volumes"):
            continue  # the RLE table's root is written in by its script (a Kaggle download)
        require_data(str(source.root.relative_to(sample_data_dir())))
        files, unannotated = _source_files(source)  # raises when an unannotated entry matches no image
        assert files, f"{spec.name}: source {source.name} finds no image with {source.images!r}"
        assert len(unannotated) == len(source.unannotated)


def test_unannotated_spec_is_the_recipe_plus_one_slice():
    """The retraining of EXPERIMENTS.md ("a slice nobody drew") changes one thing against the bundled recipe."""
    _, recipe, _ = _sources(ROOT / "Resources" / "recipes" / "ivd-disc-2d.export.json")
    _, listed, _ = _sources(ROOT / "Resources" / "recipes" / "ivd-disc-2d-unannotated.export.json")
    assert [(s.name, s.images, s.labels, s.class_map) for s in recipe] == \
           [(s.name, s.images, s.labels, s.class_map) for s in listed]
    assert [s.unannotated for s in listed] == [(), (), ("images/0.png",)]
    _, spine, _ = _sources(ROOT / "Resources" / "recipes" / "ivd-spine-2d.export.json")
    assert [s.unannotated for s in spine] == [(), (), ("images/0.png",)]


@pytest.mark.parametrize("package", ["ivd-disc-2d", "ivd-spine-2d"])
def test_the_recipe_is_the_recipe_of_the_bundled_model(package):
    """The package's recipe names the bundled version, its 256 px stage has the options the bundled card records,
    and its export spec leaves out of training what the bundled card says was left out: a recipe that drifts from
    the model it claims to reproduce fails here, not after three hours of training."""
    import json
    import re

    from ivdseg.models.package import read_card, resolve_model

    script = (ROOT / "Resources" / "recipes" / f"{package}.sh").read_text(encoding="utf-8")
    card = read_card(resolve_model(package))
    assert any(f"Resources/recipes/{package}.sh" in line for line in card["reproduce"])
    assert set(re.findall(r"--model-version (\S+)", script)) == {card["version"]}
    stage2 = re.search(r"^STAGE2=\((.*)\)$", script, re.M).group(1).split()
    command = card["training"]["command"].split()
    for option, value in zip(stage2[::2], stage2[1::2]):
        given = command[command.index(option) + 1]
        assert given == value or float(given) == float(value), (option, value, given)
    spec = json.loads((ROOT / re.search(r"--spec (\S+\.export\.json)", script).group(1)).read_text(encoding="utf-8"))
    left_out = {s["name"]: len(s.get("unannotated", [])) for s in spec["sources"]}
    assert {name: info.get("unannotated_slices", 0) for name, info in card["training"]["sources"].items()} == left_out


def test_the_disc_centre_recipe_ends_at_the_bundled_version():
    """ivd-disc-centres-2d.sh trains 1.0.0 and makes the bundled version from it with fit-chain: its last
    --model-version is the bundled card's, whose decoding came from that command."""
    import re

    from ivdseg.models.package import read_card, resolve_model

    script = (ROOT / "Resources" / "recipes" / "ivd-disc-centres-2d.sh").read_text(encoding="utf-8")
    card = read_card(resolve_model("ivd-disc-centres-2d"))
    fit = re.search(r"^ivdseg fit-chain .*?--model-version (\S+)", script, re.M | re.S)
    assert fit and fit.group(1) == card["version"]
    assert card["decode"]["method"] == "chain" and card["decode"]["command"].startswith("ivdseg fit-chain")
    assert card["decode"]["validation_mre_px"]["chain 0.3"] < card["decode"]["validation_mre_px"]["peaks"]
