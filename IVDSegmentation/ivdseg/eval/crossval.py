"""Cross-validation by source (leave one source out: the estimate of "a hospital never seen") or by patient
(stratified group k-fold), each fold a full training whose held-out patients chose nothing.

Leave one source out: for each source S, train on the other sources' training patients, choose (checkpoint,
schedule, post-processing) on their validation patients, and score every patient of S. By patient: the dataset's
non-test patients are dealt into K folds within each source; for each fold, validation patients are drawn from the
other folds and the fold itself is scored. The dataset's test patients are in no fold, neither trained nor scored:
they stay for the one final report.

Writes ``OUT/<fold>/`` (a run folder with its model package), ``OUT/<fold>/held_out.json`` and the tables
``OUT/crossval.json`` and ``OUT/crossval.md`` (per fold and per source: Dice per class; mean and spread over
folds). A killed run resumes with ``resume=True``: finished folds are kept, an unfinished one continues from its
last checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.data.splits import split_patients, stratified_group_kfold
from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_write, write_json
from ivdseg.models.card import UNTRAINED_NOTE, size_text, untrained_classes, untrained_text

BY = ("source", "patient")


def plan_folds(info: ds.DatasetInfo, by: str, folds: int = 5, seed: int = 0, val_fraction: float = 0.15) -> list:
    """The folds of a cross-validation, before any training.

    Returns:
        ``[{"name", "train": [...], "val": [...], "held_out": [...]}]`` of patient pseudonyms.

    Raises:
        IvdsegError: fewer than two sources (by source), a source of one patient (it cannot be left out alone),
            a fold that leaves no training or validation patient, fewer patients than folds (by patient).
    """
    if by not in BY:
        raise IvdsegError(f"--by must be 'source' or 'patient', not {by!r}.")
    test = set(info.splits.get("test", []))
    sources = {s: [p for p in patients if p not in test] for s, patients in info.patients_by_source().items()}
    if by == "source":
        if len(sources) < 2:
            raise IvdsegError(f"{info.root} has one source ({', '.join(sources)}); leaving one source out needs at "
                              "least two. Use --by patient.")
        lonely = [s for s, patients in sources.items() if len(patients) < 2]
        if lonely:
            raise IvdsegError(f"Source {lonely[0]!r} has one patient outside test, so it cannot be left out alone "
                              "(its figure would rest on one patient); merge it with a related source or use "
                              "--by patient.")
        train, val = set(info.splits["train"]), set(info.splits["val"])
        plan = []
        for source, patients in sources.items():
            others = [p for s, members in sources.items() if s != source for p in members]
            plan.append({"name": f"without-{source}", "held_out_source": source,
                         "train": sorted(p for p in others if p in train), "val": sorted(p for p in others if p in val),
                         "held_out": sorted(patients)})
    else:
        strata = {p: s for s, patients in sources.items() for p in patients}
        dealt = stratified_group_kfold(strata, folds, seed)
        plan = []
        for k, held_out in enumerate(dealt):
            rest = {p: s for p, s in strata.items() if p not in set(held_out)}
            counts = {s: list(rest.values()).count(s) for s in set(rest.values())}
            # a source with one patient left cannot give one to validation: such sources draw together
            pooled = {p: s if counts[s] > 1 else "(sources with one patient)" for p, s in rest.items()}
            parts = split_patients(pooled, val_fraction, 0.0, seed)
            plan.append({"name": f"fold-{k}", "train": parts["train"], "val": parts["val"], "held_out": held_out})
    for fold in plan:
        if not fold["train"] or not fold["val"]:
            part = "training" if not fold["train"] else "validation"
            raise IvdsegError(f"Cross-validation fold {fold['name']} has no {part} patient; export with more "
                              "patients per source or a larger --val-fraction.")
    return plan


def _spread(values) -> dict:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    sd = round(float(np.std(values, ddof=1)), 4) if len(values) > 1 else None  # one fold has no spread
    return {"mean": round(float(np.mean(values)), 4), "sd": sd, "n": len(values)}


def summarize(folds: list, classes: list, sources: dict | None = None) -> dict:
    """Mean and spread over folds, overall and per held-out source, of each class's Dice; a class a fold's network
    was never taught (:func:`untrained_classes`, with ``sources``) counts as not measured there."""
    per_source: dict[str, dict[str, list]] = {}
    untrained = [set(untrained_classes(fold, sources or {})) for fold in folds]
    for fold, skip in zip(folds, untrained):
        for source, scores in fold["held_out"].get("per_source", {}).items():  # a card keeps only "overall"
            for name in classes:
                dice = None if name in skip else scores["dice"].get(name)
                per_source.setdefault(source, {}).setdefault(name, []).append(dice)
    overall = {name: _spread([None if name in skip else f["held_out"]["overall"]["dice"].get(name)
                              for f, skip in zip(folds, untrained)]) for name in classes}
    return {"overall": overall,
            "per_source": {s: {name: _spread(v) for name, v in scores.items()} for s, scores in per_source.items()}}


def _table(result: dict) -> str:
    classes = result["classes"]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    lines = [f"# Cross-validation by {result['by']}: {result['dataset_name']}", "",
             f"Network {result['config']['network']}, {result['config']['size']} px; Dice at native resolution on "
             "held-out patients that chose nothing.", "",
             "| fold | held-out source | patients | " + " | ".join(classes) + " | predicted / true size |",
             "|---|---|---|" + "---|" * len(classes) + "---|"]
    for fold in result["folds"]:
        skip = set(untrained_classes(fold, result.get("sources", {})))
        for source, s in fold["held_out"]["per_source"].items():
            lines.append(f"| {fold['name']} | {source} | {s['patients']} | "
                         + " | ".join(untrained_text(s["dice"].get(c), fmt) if c in skip else fmt(s["dice"].get(c))
                                      for c in classes) + f" | {size_text(s, classes)} |")
    lines += ["", "| source | folds | " + " | ".join(f"{c} mean ± sd" for c in classes) + " |",
              "|---|---|" + "---|" * len(classes)]
    for source, scores in [*result["summary"]["per_source"].items(), ("all (pooled per fold)",
                                                                         result["summary"]["overall"])]:
        n = max(v["n"] for v in scores.values())
        lines.append(f"| {source} | {n} | " + " | ".join(
            "n/a" if v["mean"] is None else fmt(v["mean"]) if v["sd"] is None else f"{fmt(v['mean'])} ± {fmt(v['sd'])}"
            for v in scores.values()) + " |")
    if any(untrained_classes(fold, result.get("sources", {})) for fold in result["folds"]):
        lines += ["", UNTRAINED_NOTE]
    return "\n".join(lines) + "\n"


def _fold_starts(init_from, plan, option="--init-from", by=None, seed=None) -> dict[str, str]:
    """{fold name: package} of an earlier cross-validation folder whose folds are those of ``plan`` (made ``by``
    the same grouping and, by patient, dealt with the same ``seed``: fold sizes alone cannot tell two deals apart)."""
    earlier = Path(init_from)
    table_path = earlier / "crossval.json"
    if not table_path.is_file():
        raise IvdsegError(f"{option} {init_from}: each fold takes the model of the same fold of an earlier ivdseg "
                          "crossval folder; a single model package may have been trained on the patients a fold "
                          "holds out.")
    try:
        table = json.loads(table_path.read_text(encoding="utf-8"))
        folds = {f["name"]: f for f in table["folds"]}
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise IvdsegError(f"{table_path} is not the crossval.json of ivdseg crossval.") from None
    if by is not None and table.get("by") != by:
        raise IvdsegError(f"{option} {init_from} was cross-validated by {table.get('by')}, this run is by {by}.")
    if by == "patient" and (table.get("config") or {}).get("seed") != seed:
        raise IvdsegError(f"{option} {init_from} dealt its patient folds with --seed "
                          f"{(table.get('config') or {}).get('seed')}, this run with {seed}: its folds hold other "
                          "patients, so each fold's model may have been trained on the patients this fold holds out.")
    if not table.get("complete", True):
        raise IvdsegError(f"{option} {init_from} is unfinished ({len(folds)} of {len(plan)} folds); finish it with "
                          "ivdseg crossval --resume first.")
    starts = {}
    for fold in plan:
        old = folds.get(fold["name"])
        counts = {part: len(fold[part]) for part in ("train", "val", "held_out")}
        if old is None or old.get("patients") != counts:
            raise IvdsegError(f"{option} {init_from} has no fold {fold['name']!r} with these patients "
                              f"({counts['train']} training, {counts['val']} validation, {counts['held_out']} held "
                              "out); run it on the same dataset with the same --by, --folds and --seed.")
        package = earlier / old["package"]
        if not (package / "model.json").is_file():
            raise IvdsegError(f"{option} {init_from}: the package of fold {fold['name']!r} is missing.")
        starts[fold["name"]] = str(package)
    return starts


def crossval(dataset_dir, out_dir, cfg, by="source", folds=5, val_fraction=0.15, reporter=None, stop=None,
             resume=False, overwrite=False) -> dict:
    """Runs every fold of :func:`plan_folds` with :func:`ivdseg.nn.train.train`; returns the result table.

    Args:
        dataset_dir: a dataset folder of ``ivdseg export``.
        out_dir: the cross-validation folder (one run folder per fold, the tables).
        cfg: a TrainConfig used for every fold (each fold's package is named "<name>-<fold>").
        by: "source" (leave one source out) or "patient" (stratified group k-fold with ``folds`` folds).
        val_fraction: by patient, the share of the other folds' patients that validates each fold.
        reporter, stop: as for train.
        resume: keep finished folds and continue an unfinished one from its last checkpoint.
        overwrite: start afresh in a folder that holds an earlier cross-validation.

    ``cfg.init_from``, when set, must be the folder of an earlier cross-validation of the same folds: each fold
    then starts from that fold's package (stage 2 of a two-stage recipe). A single package is refused: it may have
    been trained on the patients a fold holds out.

    Raises:
        IvdsegError: see :func:`plan_folds` and train; an occupied folder without ``resume`` or ``overwrite``.
    """
    from ivdseg.nn.train import check_config, train
    from ivdseg.progress import Reporter

    reporter = reporter or Reporter("jsonl")
    check_config(cfg)
    info = ds.open_dataset(dataset_dir)
    plan = plan_folds(info, by, folds, cfg.seed, val_fraction)
    starts = _fold_starts(cfg.init_from, plan, by=by, seed=cfg.seed) if cfg.init_from else {}
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (resume or overwrite):
        raise IvdsegError(f"{out_dir} already holds a cross-validation; pass --resume to continue it or --overwrite "
                          "to start afresh.")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for n, fold in enumerate(plan):
        run = out_dir / fold["name"]
        done = run / "held_out.json"
        fold_cfg = replace(cfg, name=f"{cfg.name}-{fold['name']}", init_from=starts.get(fold["name"]))
        if resume and done.is_file():
            _check_finished_fold(run, fold_cfg, out_dir)
            results.append(json.loads(done.read_text(encoding="utf-8")))
            reporter.message(f"Fold {fold['name']} was finished before; kept.")
            continue
        reporter.message(f"Fold {n + 1}/{len(plan)} ({fold['name']}): {len(fold['train'])} training, "
                         f"{len(fold['val'])} validation, {len(fold['held_out'])} held-out patients.")
        in_progress = resume and (run / "checkpoints" / "last.keras").is_file()
        package = train(dataset_dir, run, fold_cfg, reporter, resume=in_progress, overwrite=not in_progress,
                        stop=stop, command=f"ivdseg crossval DATASET -o OUT --by {by} (fold {fold['name']})",
                        patients={"train": fold["train"], "val": fold["val"], "test": fold["held_out"],
                                  "split": f"cross-validation by {by}, fold {fold['name']}"})
        if stop is not None and stop.requested:  # stopped inside the fold: resume continues it from its checkpoint
            reporter.message(f"Stopped in fold {fold['name']}; --resume continues it.")
            break
        result = _fold_result(fold, package, out_dir)
        write_json(done, result)
        results.append(result)
    config = {k: v for k, v in asdict(cfg).items() if k not in ("card_extra", "init_from")}
    extra = {"init_from_crossval": Path(cfg.init_from).name} if cfg.init_from else {}
    return _write_tables(out_dir, dataset_dir, info, by, config, results, len(plan), reporter, extra)


# Settings that do not change what a fold's network learns: the package's name and version, and where it started
# from (a path, which may have moved; the earlier cross-validation's folds are checked by _fold_starts).
_NOT_COMPARED = {"name", "version", "card_extra", "init_from"}


def _check_finished_fold(run: Path, fold_cfg, out_dir: Path) -> None:
    """Refuses to keep a finished fold that was trained with other settings than this run asks for (a crossval
    resumed with, say, another --base-filters would otherwise mix two experiments in one table).

    Settings a fold's config.json does not hold (written before they existed) are not compared.

    Raises:
        IvdsegError: a setting differs, or the fold's config.json is missing or unreadable.
    """
    from ivdseg.nn.train import train_flag

    path = run / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise IvdsegError(f"Cannot resume {out_dir}: {path} is missing or unreadable, so the settings of its finished "
                          "fold are unknown; start afresh with --overwrite.") from None
    requested = asdict(fold_cfg)
    differ = [k for k in requested if k not in _NOT_COMPARED and k in saved and saved[k] != requested[k]]
    if differ:
        was = ", ".join(f"{train_flag(k)} {saved[k]}" for k in differ)
        now = ", ".join(f"{train_flag(k)} {requested[k]}" for k in differ)
        raise IvdsegError(f"Cannot resume {out_dir}: its fold {run.name} was trained with {was}, this run asks for "
                          f"{now}; repeat its settings, or cross-validate into another folder.")


def _fold_result(fold, package, out_dir) -> dict:
    card = json.loads((package / "model.json").read_text(encoding="utf-8"))
    return {"name": fold["name"], "held_out_source": fold.get("held_out_source"),
            "patients": {part: len(fold[part]) for part in ("train", "val", "held_out")},
            "held_out": card["test"], "validation": card["validation"]["overall"],
            "package": str(package.relative_to(out_dir))}


def _write_tables(out_dir, dataset_dir, info, by, config, results, planned, reporter, extra) -> dict:
    classes = info.classes[1:]
    sources = {name: {"labelled_classes": s.get("labelled_classes", [])} for name, s in info.sources.items()}
    table = {"by": by, "dataset_name": Path(dataset_dir).name, "classes": classes, "config": config, **extra,
             "sources": sources, "folds": results, "summary": summarize(results, classes, sources),
             "complete": len(results) == planned}
    write_json(out_dir / "crossval.json", table)
    markdown = _table(table)
    atomic_write(out_dir / "crossval.md", lambda temp: Path(temp).write_text(markdown, encoding="utf-8"),
                 overwrite=True)
    reporter.emit("done", crossval=str(out_dir / "crossval.json"), folds=len(results), complete=table["complete"],
                  mean_dice={c: table["summary"]["overall"][c]["mean"] for c in classes})
    return table


def ensemble_crossval(dataset_dir, out_dir, members, by="source", folds=5, seed=0, val_fraction=0.15, name="ensemble",
                      reporter=None, stop=None, overwrite=False, batch_size=16, version="1.0.0") -> dict:
    """The cross-validation of an ensemble: each fold's package is the average of the same fold's packages of the
    earlier cross-validations ``members`` (e.g. one recipe trained with other seeds), its post-processing chosen on
    the fold's validation patients, and it is scored on the fold's held-out patients, which chose nothing. Writes
    the same folders and tables as :func:`crossval`; the members' folds must be those of the plan (same dataset and
    ``by``; by patient also the same ``folds`` and ``seed``, which deals the folds: runs with other seeds can be
    averaged only by source).

    Raises:
        IvdsegError: fewer than two members, a member without these folds or with a fold unfinished, members that
            cannot be averaged (other input, classes or normalisation), an occupied folder without ``overwrite``.
    """
    import keras

    from ivdseg.commands.training import check_model_fits
    from ivdseg.models.ensemble import (ensemble_card, ensemble_network, load_networks, read_members, say_dropped,
                                        weights_storage)
    from ivdseg.nn.train import score_and_package
    from ivdseg.progress import Reporter

    reporter = reporter or Reporter("jsonl")
    if len(members) < 2:
        raise IvdsegError("An ensemble needs at least two cross-validation folders.")
    out_dir = Path(out_dir)
    if out_dir.resolve() in {Path(m).resolve() for m in members}:
        raise IvdsegError(f"{out_dir} is one of the members; write the ensemble to a folder of its own.")
    info = ds.open_dataset(dataset_dir)
    plan = plan_folds(info, by, folds, seed, val_fraction)
    starts = [_fold_starts(member, plan, "--crossvals", by, seed) for member in members]
    packages = {fold["name"]: [start[fold["name"]] for start in starts] for fold in plan}
    cards = {name: read_members(fold_packages) for name, fold_packages in packages.items()}
    for fold_cards in cards.values():  # every fold's members checked before anything is written
        check_model_fits(fold_cards[0], info)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise IvdsegError(f"{out_dir} already holds a cross-validation; pass --overwrite to start afresh.")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for fold in plan:
        if stop is not None and stop.requested:
            break
        keras.backend.clear_session()  # the previous fold's networks
        reporter.message(f"Fold {fold['name']}: the average of {len(members)} models.")
        card = ensemble_card(cards[fold["name"]], f"{name}-{fold['name']}", version,
                             f"ivdseg ensemble DATASET -o OUT --crossvals ({len(members)} folders) --by {by}"
                             + (f" --folds {folds} --seed {seed}" if by == "patient" else ""))
        card["training"]["test_patients"] = len(fold["held_out"])
        if not results:
            say_dropped(cards[fold["name"]], card, reporter)
        package = score_and_package(ensemble_network(load_networks(packages[fold["name"]])), card, info, info.cases_of(fold["val"]),
                                    info.cases_of(fold["held_out"]), f"cross-validation by {by}, fold {fold['name']}",
                                    out_dir / fold["name"] / "model", reporter, batch_size,
                                    weights=weights_storage(cards[fold["name"]]))
        result = _fold_result(fold, package, out_dir)
        write_json(out_dir / fold["name"] / "held_out.json", result)
        results.append(result)
    config = {"network": f"ensemble of {len(members)}", "size": cards[plan[0]["name"]][0]["input_size"],
              "members": [Path(m).name for m in members], "seed": seed}
    return _write_tables(out_dir, dataset_dir, info, by, config, results, len(plan), reporter, {})
