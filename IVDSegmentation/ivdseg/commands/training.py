"""The commands that make and judge models: ``ivdseg export``, ``train``, ``crossval`` and ``evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

from ivdseg.commands.inference import check_batch_size, check_folder_of
from ivdseg.errors import IvdsegError


def _read_json_object(path: Path, option: str, what: str) -> dict:
    """The JSON object in ``path``; ``what`` says what it must be, e.g. "an export spec"."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IvdsegError(f"{option} {path} is not readable JSON ({exc}); it must be {what}.") from None
    if not isinstance(value, dict):
        raise IvdsegError(f"{option} {path} holds a JSON {type(value).__name__}, not the JSON object {{...}} "
                          f"of {what}.")
    return value


def _export_sources(a):
    """(classes, sources, overlapping) from --spec or from --images/--labels/--class, checked.

    ``overlapping`` is the spec's top-level ``"overlapping"`` (default false): the classes may overlap and the
    labels keep one bit per class (ivdseg.data.labels); the --images form exports exclusive classes."""
    from ivdseg.data.export import SourceSpec

    if not a.spec:
        if not (a.images and a.labels and a.classes):
            raise IvdsegError("ivdseg export needs --spec, or --images, --labels and at least one --class.")
        return [name for name, _ in a.classes], [
            SourceSpec(name=a.source_name, kind=a.kind, images=a.images, labels=a.labels,
                       class_map=dict(a.classes), patient_pattern=a.patient_pattern, root=Path.cwd())], False
    spec = _read_json_object(a.spec, "--spec", "an export spec")
    classes, sources = spec.get("classes"), spec.get("sources")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and isinstance(sources, list) and sources and all(isinstance(s, dict) for s in sources)):
        raise IvdsegError(f"--spec {a.spec} must list 'classes' (names) and at least one object in 'sources'.")
    overlapping = spec.get("overlapping", False)
    if not isinstance(overlapping, bool):
        raise IvdsegError(f"--spec {a.spec}: 'overlapping' must be true or false, not {overlapping!r}.")
    return classes, [SourceSpec.from_dict(s, a.spec.parent) for s in sources], overlapping


def _check_export_args(a):
    if not 0.0 < a.val_fraction < 1.0:
        raise IvdsegError(f"--val-fraction must lie strictly between 0 and 1, got {a.val_fraction}.")
    if not 0.0 <= a.test_fraction < 1.0 or a.val_fraction + a.test_fraction >= 1.0:
        raise IvdsegError(f"--test-fraction must lie in [0, 1) and leave patients for training with --val-fraction "
                          f"{a.val_fraction}, got {a.test_fraction}.")
    if a.kfold < 0 or a.kfold == 1:
        raise IvdsegError(f"--kfold must be 0 (no folds) or at least 2, got {a.kfold}.")
    bad = [s for s in a.sizes if s < 16 or s % 16]
    if not a.sizes or bad:
        raise IvdsegError(f"--sizes must be multiples of 16 (the networks halve them four times), got "
                          f"{','.join(map(str, bad or a.sizes)) or 'none'}.")
    if a.output.exists() and not a.overwrite:
        raise IvdsegError(f"{a.output} already exists; choose another name or pass --overwrite.")
    check_folder_of(a.output, "the dataset")
    if a.pseudonym_key_file:
        check_folder_of(a.pseudonym_key_file, "--pseudonym-key-file")


def export(a) -> int:
    from ivdseg.data.export import ExportOptions, export_dataset, iter_source_cases, load_or_create_pseudonym_key
    from ivdseg.progress import Reporter

    _check_export_args(a)
    classes, sources, overlapping = _export_sources(a)
    key, key_created = (load_or_create_pseudonym_key(a.pseudonym_key_file) if a.pseudonym_key_file
                        else (None, False))
    options = ExportOptions(sizes=a.sizes, background_channel=not a.no_background_channel,
                            val_fraction=a.val_fraction, test_fraction=a.test_fraction, seed=a.seed, kfold=a.kfold,
                            resize=a.resize, keep_unlabelled=not a.drop_unlabelled, overlapping=overlapping,
                            pseudonym_key=key, table_class_names={
                                name: values[0] for s in sources if s.kind == "rle_csv"
                                for name, values in s.class_map.items() if values},
                            table_rle_order=next((s.table.rle_order for s in sources if s.kind == "rle_csv"), ""))
    reporter = Reporter.auto(a.progress)

    def cases():
        for s in sources:
            yield from iter_source_cases(s, classes, overlapping)

    try:
        info = export_dataset(cases(), classes, a.output, options, overwrite=a.overwrite,
                              progress=a.stop.guard(reporter.progress))
    except BaseException:
        if key_created:  # a failed export leaves nothing, not even a key that no dataset uses
            a.pseudonym_key_file.unlink(missing_ok=True)
        raise
    for name, summary in info.sources.items():
        reporter.message(_empty_slices_sentence(name, summary))
    reporter.emit("done", dataset=str(a.output), cases=len(info.cases),
                  patients=len({m["patient"] for m in info.cases.values()}),
                  train_patients=len(info.splits["train"]), val_patients=len(info.splits["val"]),
                  test_patients=len(info.splits.get("test", [])),
                  empty_slices={name: {"slices": s["slices"], "without_any_class": s["slices_without_any_class"],
                                       "without_class": s["slices_without_class"]}
                                for name, s in info.sources.items()})
    return 0


def _empty_slices_sentence(name: str, s: dict) -> str:
    """How many of a source's exported slices lack each class, and every class (dataset.json's summary)."""
    without = ", ".join(f"{n} without {c}" for c, n in s["slices_without_class"].items())
    if s.get("unannotated_slices"):
        without += (f"; {s['unannotated_slices']} listed as unannotated in the spec (neither taught nor scored as "
                    "background)")
    dropped = s.get("dropped_unlabelled_slices")
    if dropped is not None:
        return (f"Source {name!r}: {s['slices']} slices kept ({dropped} without any mask dropped by "
                f"--drop-unlabelled); {without}.")
    return (f"Source {name!r}: {s['slices']} slices, {s['slices_without_any_class']} of them without any mask "
            f"(kept; --drop-unlabelled would drop them); {without}.")


def _train_config(a):
    """The TrainConfig of train's and crossval's options, checked before any work."""
    from ivdseg.nn.train import TrainConfig, check_config

    cfg = TrainConfig(network=a.network, size=a.size, activation=a.activation, depth=a.depth,
                      base_filters=a.base_filters, dropout=a.dropout, loss=a.loss, epochs=a.epochs,
                      batch_size=a.batch_size, learning_rate=a.learning_rate, steps_per_epoch=a.steps_per_epoch,
                      patience=a.patience, keep_best=a.keep_best, seed=a.seed, fold=getattr(a, "fold", None),
                      augment=not a.no_augment, augmentation=a.augmentation, source_sampling=a.source_sampling,
                      mixed_precision=a.mixed_precision,
                      init_from=a.init_from, name=a.name, version=a.model_version,
                      context_slices=a.context_slices, encoder_weights=a.encoder_weights, weights=a.weights)
    check_config(cfg)
    return cfg


def crossval(a) -> int:
    from ivdseg.eval.crossval import crossval
    from ivdseg.progress import Reporter

    cfg = _train_config(a)
    if a.folds < 2:
        raise IvdsegError(f"--folds must be at least 2, got {a.folds}.")
    if not 0.0 < a.val_fraction < 1.0:
        raise IvdsegError(f"--val-fraction must lie strictly between 0 and 1, got {a.val_fraction}.")
    reporter = Reporter.auto(a.progress)
    table = crossval(a.dataset, a.output, cfg, by=a.by, folds=a.folds, val_fraction=a.val_fraction,
                     reporter=reporter, stop=a.stop, resume=a.resume, overwrite=a.overwrite)
    if reporter.mode == "text":
        reporter.message((a.output / "crossval.md").read_text(encoding="utf-8"))
    if not table["complete"]:  # stopped: what ran is in the tables, --resume runs the rest
        from ivdseg.stop import EXIT_CANCELLED

        return EXIT_CANCELLED
    return 0


def train(a) -> int:
    from ivdseg.progress import Reporter
    from ivdseg.nn.train import reproduce_command, train

    cfg = _train_config(a)
    if a.card:
        cfg.card_extra = _read_json_object(a.card, "--card", "a card extract")
    if a.crossval:
        table = _read_json_object(a.crossval, "--crossval", "the crossval.json of ivdseg crossval")
        cfg.card_extra = {**cfg.card_extra, "crossval": crossval_summary(table, a.crossval)}
    train(a.dataset, a.output, cfg, Reporter.auto(a.progress), resume=a.resume, overwrite=a.overwrite,
          command=reproduce_command(cfg, a.card.name if a.card else None), stop=a.stop)
    return 0


def crossval_summary(table: dict, path) -> dict:
    """What a card keeps of a cross-validation run with the same settings: each fold's held-out figures and the
    summary, no path."""
    try:
        folds = [{"name": f["name"], "held_out_source": f.get("held_out_source"), "patients": f["patients"],
                  "held_out": {"overall": f["held_out"]["overall"]}} for f in table["folds"]]
        return {"by": table["by"], "complete": bool(table["complete"]), "folds": folds, "summary": table["summary"],
                **({"sources": table["sources"]} if "sources" in table else {})}
    except (KeyError, TypeError):
        raise IvdsegError(f"--crossval {path} is not the crossval.json of ivdseg crossval.") from None


def check_model_fits(card: dict, info) -> None:
    """Raises IvdsegError unless the model segments the dataset's classes in the dataset's encoding."""
    if [c["name"] for c in card["classes"]] != info.classes[1:]:
        raise IvdsegError(f"The model's classes {[c['name'] for c in card['classes']]} differ from "
                          f"the dataset's {info.classes[1:]}.")
    if bool(card.get("overlapping")) != info.overlapping:
        says = {True: "may overlap (one output each)", False: "are exclusive (one per pixel)"}
        raise IvdsegError(f"The model's classes {says[bool(card.get('overlapping'))]} but the dataset's "
                          f"{says[info.overlapping]}; evaluate it on a dataset exported the way it was trained.")


def ensemble(a) -> int:
    """``ivdseg ensemble DATASET -o OUT --members PKG PKG ...``: one package averaging the members, its
    post-processing chosen on the dataset's validation patients and its test patients scored once; or with
    ``--crossvals CV CV ...``: the cross-validation of that ensemble, fold by fold."""
    from ivdseg.data import dataset as ds
    from ivdseg.progress import Reporter

    check_batch_size(a)
    reporter = Reporter.auto(a.progress)
    if a.crossvals:
        from ivdseg.eval.crossval import ensemble_crossval

        if a.folds < 2:
            raise IvdsegError(f"--folds must be at least 2, got {a.folds}.")
        if not 0.0 < a.val_fraction < 1.0:
            raise IvdsegError(f"--val-fraction must lie strictly between 0 and 1, got {a.val_fraction}.")
        table = ensemble_crossval(a.dataset, a.output, a.crossvals, a.by, a.folds, a.seed, a.val_fraction, a.name,
                                  reporter, a.stop, a.overwrite, a.batch_size, a.model_version)
        if reporter.mode == "text":
            reporter.message((a.output / "crossval.md").read_text(encoding="utf-8"))
        return 0 if table["complete"] else 3
    from ivdseg.models.ensemble import (ensemble_card, ensemble_network, load_networks, read_members, say_dropped,
                                        weights_storage)
    from ivdseg.models.package import resolve_model
    from ivdseg.nn.train import score_and_package

    if (a.output / "model.json").is_file():
        if not a.overwrite:
            raise IvdsegError(f"{a.output} already holds a model package; pass --overwrite to replace it.")
    elif a.output.is_file() or a.output.is_dir() and any(a.output.iterdir()):
        raise IvdsegError(f"{a.output} exists and is not a model package; choose a new folder.")
    check_folder_of(a.output, "the package")
    info = ds.open_dataset(a.dataset)
    packages = [resolve_model(m) for m in a.members]
    cards = read_members(packages)
    check_model_fits(cards[0], info)
    for package, member in zip(packages, cards):  # a member of another split may have trained on the test patients
        if not str(member.get("validation", {}).get("split", "")).startswith("splits.json") or \
                member.get("training", {}).get("test_patients") != len(info.splits.get("test", [])):
            raise IvdsegError(f"{package} was not trained on this dataset's own split (splits.json); its ensemble "
                              "could not be scored on test patients that chose nothing.")
    _, val_cases = info.split_cases(None)
    if not val_cases:
        raise IvdsegError(f"{a.dataset} has no validation patients to choose the ensemble's post-processing on.")
    card = ensemble_card(cards, a.name, a.model_version,
                         f"ivdseg ensemble DATASET -o OUT --members ({len(packages)} packages)")
    card["training"]["test_patients"] = len(info.splits.get("test", []))
    say_dropped(cards, card, reporter)
    score_and_package(ensemble_network(load_networks(packages)), card, info, val_cases, info.test_cases(), "splits.json", a.output,
                      reporter, a.batch_size, weights=weights_storage(cards))
    reporter.emit("done", package=str(a.output), members=len(packages),
                  val_dice=card["validation"]["overall"]["mean_dice"],
                  test_dice=card["test"]["overall"]["mean_dice"] if "test" in card else None)
    return 0


def evaluate(a) -> int:
    from ivdseg.data import dataset as ds
    from ivdseg.eval.evaluate import evaluate_cases
    from ivdseg.models.card import size_text
    from ivdseg.models.package import load_package, resolve_model

    check_batch_size(a)
    if a.json:
        check_folder_of(a.json, "--json")
    info = ds.open_dataset(a.dataset)
    model, card = load_package(resolve_model(a.model))
    check_model_fits(card, info)
    train_cases, val_cases = info.split_cases(a.fold)
    cases = {"val": val_cases, "test": info.test_cases(), "train": train_cases, "all": sorted(info.cases)}[a.split]
    if not cases:
        raise IvdsegError(f"{a.dataset} has no {a.split} patients; re-export it with --test-fraction to hold some out."
                          if a.split == "test" else f"{a.dataset} has no {a.split} patients.")
    if a.record and (a.split != "test" or a.fold is not None or a.choose_tta):
        raise IvdsegError("--record writes the test figures into the card; pass --split test, without --fold or "
                          "--choose-tta.")
    if a.record and not resolve_model(a.model).is_dir():
        raise IvdsegError(f"--record writes into a package folder's card; {a.model} is a .zip: unpack it first.")
    if a.choose_tta:
        if a.split != "val":
            raise IvdsegError("--choose-tta chooses on the validation patients; pass --split val.")
        from ivdseg.eval.evaluate import choose_tta
        from ivdseg.models.package import update_card

        tta = choose_tta(model, card, info, cases, a.batch_size, progress=a.stop.guard(None))
        update_card(resolve_model(a.model), {"tta": tta})
        print(f"Test-time augmentation (scales {tta['scales']}): validation Dice {tta['val_mean_dice_without']:.4f} "
              f"without, {tta['val_mean_dice_with']:.4f} with, {tta['time_ratio']:.1f}x the prediction time; "
              f"{'enabled' if tta['enabled'] else 'not enabled'} in the card.")
        card = {**card, "tta": tta}
    result = evaluate_cases(model, card, info, cases, a.batch_size, a.stop.guard(None))
    rows = [("all", result["overall"])] + list(result["per_source"].items())
    names = info.classes[1:]
    widths = [max(len(n), 8) for n in names]
    print(f"{'source':<24}{'patients':>9}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths))
          + "  predicted/true size")
    for source, s in rows:
        vals = "  ".join(f"{s['dice'][n]:>{w}.4f}" if s["dice"][n] is not None else f"{'n/a':>{w}}"
                         for n, w in zip(names, widths))
        print(f"{source:<24}{s['patients']:>9}  {vals}  {size_text(s, names)}")
    print(f"Dice per class at native resolution on the {a.split} split"
          + (f" of fold {a.fold}" if a.fold is not None else "")
          + "; size: predicted over true voxels (above 1: drawn too large).")
    _print_uw_madison(rows, names, widths)
    if a.json:
        from ivdseg.io.atomic import write_json

        write_json(a.json, result)
    if a.record:
        _record_test(resolve_model(a.model), card, result)
    return 0


def _record_test(package, card: dict, result: dict) -> None:
    """Writes ``result`` (the test patients scored as the package ships, with its test-time augmentation) into the
    card's "test" entry; the training's own figures, made without the augmentation, stay as "test_without_tta"
    (kept from an earlier record, else taken from the card's "test")."""
    from ivdseg.models.package import update_card

    where = str((card.get("test") or {}).get("split", "test patients (chose nothing)")).split(", with the ")[0]
    entries = {"test": {**result, "split": where}}
    if (card.get("tta") or {}).get("enabled", False):
        entries["test"]["split"] += ", with the test-time augmentation the validation patients chose"
        earlier = card.get("test_without_tta") or card.get("test")
        if earlier:
            entries["test_without_tta"] = {**earlier, "split": "the same test patients without test-time augmentation"}
    update_card(package, entries)
    print("Written into the card as its test figures" + (" (the figures without test-time augmentation kept beside "
                                                        "them)." if "test_without_tta" in entries else "."))


def _print_uw_madison(rows, names, widths) -> None:
    """The UW-Madison challenge score of ``evaluate``'s summaries: one line per source, per-class scores in the
    class columns of the Dice table above."""
    fmt = lambda v, w=8: f"{v:>{w}.4f}" if v is not None else f"{'n/a':>{w}}"  # noqa: E731
    print()
    print(f"{'source':<24}{'cases':>9}  {'score':>8}  {'Dice 2D':>8}  {'HD/diag':>8}  "
          + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths)))
    for source, s in rows:
        uw = s["uw_madison"]
        per_class = "  ".join(fmt((uw["per_class"][n] or {}).get("score"), w) for n, w in zip(names, widths))
        print(f"{source:<24}{uw['cases']:>9}  {fmt(uw['score'])}  {fmt(uw['dice_2d'])}  {fmt(uw['hausdorff_norm'])}  "
              + per_class)
    spacing = rows[0][1]["uw_madison"]["spacing"]
    units = [f"{k} case{'s' * (k != 1)} {what}" for k, what in (
        (spacing["mm"], "in mm"), (spacing["mm_in_plane"], "in mm with slices one mean pixel spacing apart"),
        (spacing["voxels"], "in voxels (spacing unknown)")) if k]
    print("UW-Madison GI tract challenge score: 0.4 x Dice per slice and class (both empty: 1) + 0.6 x (1 - 3D "
          "Hausdorff distance per case and class / the stack's diagonal; one side empty: 1); class columns: each "
          f"class's score; distances {', '.join(units) or 'of no case'}.")
