"""The ``ivdseg`` command: the engine of the Slicer module for batch work.

Errors a user can cause end in one sentence on stderr and exit code 2, never a traceback; a mistake on the command
line is found before any work, so nothing (no dataset, run folder or key file) is left behind. Warnings (e.g. a
damaged DICOM file that was skipped) are one line each on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from ivdseg.errors import IvdsegError, IvdsegWarning


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the option, like every other error of the command."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help.\n")


def _sizes(text):
    try:
        return tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers, got {text!r}") from None


def _class_arg(text):
    """"intervertebral disc=1,2,3" -> ("intervertebral disc", [1, 2, 3])."""
    name, sep, values = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--class takes NAME=VALUE[,VALUE...], got {text!r}")
    try:
        return name.strip(), [int(v) for v in values.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--class values must be integers, got {values!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ivdseg", description="Intervertebral disc segmentation in spine MRI.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__import__('ivdseg').__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="write a de-identified npz dataset from image + label pairs")
    e.add_argument("output", type=Path, help="dataset folder to create")
    e.add_argument("--spec", type=Path, help="JSON with 'classes' and several 'sources' (see README)")
    e.add_argument("--images", help="glob of images: PNG slices, or NIfTI/NRRD volumes or DICOM folders")
    e.add_argument("--labels", help="label path template: {stem}, {patient}, {name} of the image")
    e.add_argument("--kind", choices=["slices", "volumes"], default="volumes")
    e.add_argument("--source-name", default="source1", help="name of the source (hospital or set)")
    e.add_argument("--patient-pattern", help="regex on the image file name; group 1 = patient")
    e.add_argument("--class", dest="classes", action="append", type=_class_arg, default=[],
                   metavar="NAME=V[,V]", help="output class from source label values (repeatable)")
    e.add_argument("--sizes", type=_sizes, default=(128, 192, 256))
    e.add_argument("--no-background-channel", action="store_true")
    e.add_argument("--resize", choices=["stretch", "pad"], default="stretch",
                   help="how slices become the square inputs: stretch them, or pad them to a square first (keeps "
                        "the aspect ratio); the model card records it and inference repeats it")
    e.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of each source's patients in validation (every choice is made on it)")
    e.add_argument("--test-fraction", type=float, default=0.15,
                   help="share of each source's patients held out as test (reported, never chosen on); 0: none")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--kfold", type=int, default=0, help="also write k stratified group folds")
    e.add_argument("--drop-unlabelled", action="store_true", help="drop slices without any label")
    e.add_argument("--pseudonym-key-file", type=Path,
                   help="file holding the secret key of the pseudonyms (kept outside the dataset)")
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--progress", choices=["auto", "jsonl", "text", "none"], default="auto")

    t = sub.add_parser("train", help="train a network on a dataset folder; writes RUN/model")
    t.add_argument("dataset", type=Path)
    t.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    _training_args(t)
    t.add_argument("--fold", type=int, help="validate on this k-fold fold instead of the train/val split")
    t.add_argument("--card", type=Path, help="JSON merged into the model card (licence, citations, description)")

    x = sub.add_parser("crossval", help="cross-validation: leave one source out, or k folds of patients")
    x.add_argument("dataset", type=Path)
    x.add_argument("-o", "--output", type=Path, required=True, help="cross-validation folder (a run per fold)")
    x.add_argument("--by", choices=["source", "patient"], default="source",
                   help="source: train on the other sources, score the one left out (a hospital never seen); "
                        "patient: stratified group k-fold over the patients outside test")
    x.add_argument("--folds", type=int, default=5, help="with --by patient: the number of folds")
    x.add_argument("--val-fraction", type=float, default=0.15,
                   help="with --by patient: share of the other folds' patients that validates each fold")
    _training_args(x)
    _add_evaluate(sub)
    _add_inference_commands(sub)
    return p


def _training_args(t):
    """The options of train and crossval: the network, the optimisation and the run folder's handling."""
    t.add_argument("--network", default="unet2d", choices=["unet2d", "deeplabv3plus", "res_se_unet"])
    t.add_argument("--size", type=int, default=256, help="input size: 128, 192, 256 or another size the dataset holds")
    t.add_argument("--activation", default="relu", choices=["relu", "swish", "mish"])
    t.add_argument("--depth", type=int, default=4)
    t.add_argument("--base-filters", type=int, default=16)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--loss", default="dice_ce", choices=["dice", "dice_ce"])
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--steps-per-epoch", type=int)
    t.add_argument("--patience", type=int, default=15)
    t.add_argument("--keep-best", type=int, default=3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--augmentation", choices=["standard", "scanner"], default="standard",
                   help="scanner: also bias fields, coarser in-plane resolution, wider gamma/contrast/noise")
    t.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto")
    t.add_argument("--init-from", help="model package whose weights start training (fine-tuning)")
    t.add_argument("--name", default="ivdseg-model")
    t.add_argument("--model-version", default="1.0.0")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--progress", choices=["auto", "jsonl", "text", "none"], default="auto")


def _add_evaluate(sub):
    v = sub.add_parser("evaluate", help="Dice per class of a model package on a dataset's validation cases")
    v.add_argument("model", help="model package folder or .zip, or a bundled model's name")
    v.add_argument("dataset", type=Path)
    v.add_argument("--split", choices=["val", "test", "train", "all"], default="val",
                   help="which patients: val (choices are made on them), test (report once), train, all")
    v.add_argument("--fold", type=int)
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--json", type=Path, help="also write the figures to this JSON file")


def _add_inference_commands(sub):
    g = sub.add_parser("segment", help="segment the discs of a volume (DICOM folder, NIfTI or NRRD)")
    g.add_argument("input", type=Path, help="DICOM folder, .nii/.nii.gz or .nrrd")
    g.add_argument("-o", "--output", type=Path, required=True,
                   help="labelmap .nii.gz or .nrrd (+ a .json naming the classes), or a Slicer segmentation .seg.nrrd")
    _inference_args(g)
    g.add_argument("--series", help="SeriesInstanceUID when the folder holds several series")
    g.add_argument("--overlay", type=Path, help="also write a mid-sagittal PNG with the outlines")
    g.add_argument("--overwrite", action="store_true")

    d = sub.add_parser("demo", help="segment a real sample case with the bundled model and print its Dice")
    d.add_argument("--output-dir", type=Path, default=Path("ivdseg-demo"))
    d.add_argument("--sample-data", type=Path, help="sample data folder (default IVDSEG_SAMPLE_DATA or ../shared/data)")
    _inference_args(d)

    r = sub.add_parser("series", help="list the DICOM series of a folder")
    r.add_argument("folder", type=Path)


def _inference_args(g):
    g.add_argument("--model", help="model package folder/.zip or bundled name (default: the bundled disc model)")
    g.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    g.add_argument("--backend", choices=["auto", "onnx", "tensorflow"], default="auto")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--progress", choices=["auto", "jsonl", "text", "none"], default="auto")


def _check_batch_size(a):
    if a.batch_size < 1:
        raise IvdsegError(f"--batch-size must be at least 1, got {a.batch_size}.")


def _check_folder_of(path: Path, option: str):
    if not path.parent.is_dir():
        raise IvdsegError(f"{option} {path}: the folder {path.parent} does not exist; create it first.")


def _open_backend(a, reporter):
    from ivdseg.inference.backends import load_backend
    from ivdseg.models.package import resolve_model

    backend = load_backend(resolve_model(a.model), a.backend, a.device)
    reporter.message(f"Model {backend.card['name']} {backend.card['version']} on the {backend.device.upper()} "
                     f"({backend.name}).")
    return backend


def _check_output(path: Path, overwrite: bool):
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz", ".nrrd")):
        raise IvdsegError(f"{path}: the output must end in .nii.gz, .nii, .nrrd or .seg.nrrd.")
    if not path.parent.is_dir():
        raise IvdsegError(f"Cannot write {path}: folder {path.parent} does not exist.")
    if not os.access(path.parent, os.W_OK):
        raise IvdsegError(f"Cannot write {path}: folder {path.parent} is not writable.")
    if path.exists() and not overwrite:
        raise IvdsegError(f"{path} already exists; pass --overwrite to replace it.")


def _segment_to_files(a, reporter, volume, source, output, overlay=None, overwrite=False):
    """Runs the model on ``volume`` and writes ``output`` (labelmap + .json, or .seg.nrrd) and the overlay."""
    from ivdseg.inference.segment import overlay_png, segment_volume, write_result

    backend = _open_backend(a, reporter)
    result = segment_volume(volume, backend.predict, backend.card, a.batch_size, a.stop.guard(reporter.progress),
                            source=source, device=backend.device)
    a.stop.check()  # a request that came with the last batch: nothing is written
    if output.name.lower().endswith(".seg.nrrd"):
        from ivdseg.io.segnrrd import write_seg_nrrd

        write_seg_nrrd(result.labelmap, result.classes, output, overwrite=overwrite,
                       algorithm_name=f"{backend.card['name']} {backend.card['version']}")
    else:
        write_result(result, output, backend.card, overwrite=overwrite)
    if overlay:
        overlay_png(volume, result.labelmap, result.classes, overlay)
    return result


def _report_done(reporter, result, **fields):
    from ivdseg.inference.segment import summary_text

    reporter.emit("done", **fields, slices=result.slices, seconds=round(result.seconds, 2), device=result.device,
                  volumes_ml=result.volumes_ml)
    if reporter.mode == "text":
        reporter.message(summary_text(result))


def _cmd_segment(a) -> int:
    from ivdseg.progress import Reporter
    from ivdseg.io.volumes import read_volume

    _check_batch_size(a)
    _check_output(a.output, a.overwrite)
    if a.overlay:
        _check_folder_of(a.overlay, "--overlay")
    reporter = Reporter.auto(a.progress)
    volume = read_volume(a.input, series_uid=a.series)
    result = _segment_to_files(a, reporter, volume, str(a.input), a.output, a.overlay, a.overwrite)
    _report_done(reporter, result, output=str(a.output))
    return 0


DEMO_CASE = "ivd_lumbar_t2/nifti/case25"  # a patient of the bundled model's validation split


def _cmd_demo(a) -> int:
    from ivdseg.eval.metrics import dice_per_class
    from ivdseg.progress import Reporter
    from ivdseg.data.sample_data import sample_data_dir
    from ivdseg.io.volumes import read_volume

    _check_batch_size(a)
    reporter = Reporter.auto(a.progress)
    root = a.sample_data or sample_data_dir()
    image_path = root / f"{DEMO_CASE}_T2w.nii.gz"
    truth_path = root / f"{DEMO_CASE}_ivd_labels.nii.gz"
    if not image_path.is_file():
        raise IvdsegError(f"The demo case {image_path} is missing; pass --sample-data or set IVDSEG_SAMPLE_DATA.")
    a.output_dir.mkdir(parents=True, exist_ok=True)
    out, png = a.output_dir / "case25_discs.nii.gz", a.output_dir / "case25_overlay.png"
    volume = read_volume(image_path)
    result = _segment_to_files(a, reporter, volume, str(image_path), out, png, overwrite=True)
    disc = next((c["value"] for c in result.classes if c["name"] == "intervertebral disc"), None)
    if disc is None:
        raise IvdsegError("The demo scores discs, but this model has no 'intervertebral disc' class.")
    truth = read_volume(truth_path).array > 0
    dice = float(dice_per_class(truth, result.labelmap.array == disc, 2)[1])
    _report_done(reporter, result, output=str(out), overlay=str(png), dice=round(dice, 4))
    if reporter.mode == "text":
        reporter.message(f"Wrote {out} and {png}. Disc Dice against the sample's manual labels: {dice:.4f}.")
    return 0


def _cmd_series(a) -> int:
    from ivdseg.io.dicom_index import index_folder

    series = index_folder(a.folder)
    if not series:
        raise IvdsegError(f"{a.folder} holds no DICOM image series.")
    print(f"{'SeriesInstanceUID':<66} {'modality':<8} {'slices':>6}  {'orientation':<11} description")
    for s in series:
        print(f"{s.series_uid:<66} {s.modality:<8} {s.n_slices:>6}  {s.orientation:<11} {s.description}")
    return 0


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
    """(classes, sources) from --spec or from --images/--labels/--class, checked."""
    from ivdseg.data.export import SourceSpec

    if not a.spec:
        if not (a.images and a.labels and a.classes):
            raise IvdsegError("ivdseg export needs --spec, or --images, --labels and at least one --class.")
        return [name for name, _ in a.classes], [
            SourceSpec(name=a.source_name, kind=a.kind, images=a.images, labels=a.labels,
                       class_map=dict(a.classes), patient_pattern=a.patient_pattern, root=Path.cwd())]
    spec = _read_json_object(a.spec, "--spec", "an export spec")
    classes, sources = spec.get("classes"), spec.get("sources")
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
            and isinstance(sources, list) and sources and all(isinstance(s, dict) for s in sources)):
        raise IvdsegError(f"--spec {a.spec} must list 'classes' (names) and at least one object in 'sources'.")
    return classes, [SourceSpec.from_dict(s, a.spec.parent) for s in sources]


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
    _check_folder_of(a.output, "the dataset")
    if a.pseudonym_key_file:
        _check_folder_of(a.pseudonym_key_file, "--pseudonym-key-file")


def _cmd_export(a) -> int:
    from ivdseg.data.export import ExportOptions, export_dataset, iter_source_cases, load_or_create_pseudonym_key
    from ivdseg.progress import Reporter

    _check_export_args(a)
    classes, sources = _export_sources(a)
    key, key_created = (load_or_create_pseudonym_key(a.pseudonym_key_file) if a.pseudonym_key_file
                        else (None, False))
    options = ExportOptions(sizes=a.sizes, background_channel=not a.no_background_channel,
                            val_fraction=a.val_fraction, test_fraction=a.test_fraction, seed=a.seed, kfold=a.kfold,
                            resize=a.resize,
                            keep_unlabelled=not a.drop_unlabelled, pseudonym_key=key)
    reporter = Reporter.auto(a.progress)

    def cases():
        for s in sources:
            yield from iter_source_cases(s, classes)

    try:
        info = export_dataset(cases(), classes, a.output, options, overwrite=a.overwrite,
                              progress=a.stop.guard(reporter.progress))
    except BaseException:
        if key_created:  # a failed export leaves nothing, not even a key that no dataset uses
            a.pseudonym_key_file.unlink(missing_ok=True)
        raise
    reporter.emit("done", dataset=str(a.output), cases=len(info.cases),
                  patients=len({m["patient"] for m in info.cases.values()}),
                  train_patients=len(info.splits["train"]), val_patients=len(info.splits["val"]),
                  test_patients=len(info.splits.get("test", [])))
    return 0


def _train_config(a):
    """The TrainConfig of train's and crossval's options, checked before any work."""
    from ivdseg.nn.train import TrainConfig, check_config

    cfg = TrainConfig(network=a.network, size=a.size, activation=a.activation, depth=a.depth,
                      base_filters=a.base_filters, dropout=a.dropout, loss=a.loss, epochs=a.epochs,
                      batch_size=a.batch_size, learning_rate=a.learning_rate, steps_per_epoch=a.steps_per_epoch,
                      patience=a.patience, keep_best=a.keep_best, seed=a.seed, fold=getattr(a, "fold", None),
                      augment=not a.no_augment, augmentation=a.augmentation, mixed_precision=a.mixed_precision,
                      init_from=a.init_from, name=a.name, version=a.model_version)
    check_config(cfg)
    return cfg


def _cmd_crossval(a) -> int:
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


def _cmd_train(a) -> int:
    from ivdseg.progress import Reporter
    from ivdseg.nn.train import reproduce_command, train

    cfg = _train_config(a)
    if a.card:
        cfg.card_extra = _read_json_object(a.card, "--card", "a card extract")
    train(a.dataset, a.output, cfg, Reporter.auto(a.progress), resume=a.resume, overwrite=a.overwrite,
          command=reproduce_command(cfg, a.card.name if a.card else None), stop=a.stop)
    return 0


def _cmd_evaluate(a) -> int:
    from ivdseg.data import dataset as ds
    from ivdseg.eval.evaluate import evaluate_cases
    from ivdseg.models.package import load_package, resolve_model

    _check_batch_size(a)
    if a.json:
        _check_folder_of(a.json, "--json")
    info = ds.open_dataset(a.dataset)
    model, card = load_package(resolve_model(a.model))
    if [c["name"] for c in card["classes"]] != info.classes[1:]:
        raise IvdsegError(f"The model's classes {[c['name'] for c in card['classes']]} differ from "
                          f"the dataset's {info.classes[1:]}.")
    train_cases, val_cases = info.split_cases(a.fold)
    cases = {"val": val_cases, "test": info.test_cases(), "train": train_cases, "all": sorted(info.cases)}[a.split]
    if not cases:
        raise IvdsegError(f"{a.dataset} has no {a.split} patients; re-export it with --test-fraction to hold some out."
                          if a.split == "test" else f"{a.dataset} has no {a.split} patients.")
    result = evaluate_cases(model, card, info, cases, a.batch_size, a.stop.guard(None))
    rows = [("all", result["overall"])] + list(result["per_source"].items())
    names = info.classes[1:]
    widths = [max(len(n), 8) for n in names]
    print(f"{'source':<24}{'patients':>9}  " + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths)))
    for source, s in rows:
        vals = "  ".join(f"{s['dice'][n]:>{w}.4f}" if s["dice"][n] is not None else f"{'n/a':>{w}}"
                         for n, w in zip(names, widths))
        print(f"{source:<24}{s['patients']:>9}  {vals}")
    print(f"Dice per class at native resolution on the {a.split} split"
          + (f" of fold {a.fold}" if a.fold is not None else "") + ".")
    if a.json:
        from ivdseg.io.atomic import write_json

        write_json(a.json, result)
    return 0


COMMANDS = {"export": _cmd_export, "train": _cmd_train, "crossval": _cmd_crossval, "evaluate": _cmd_evaluate,
            "segment": _cmd_segment, "demo": _cmd_demo, "series": _cmd_series}


def main(argv=None) -> int:
    from ivdseg.stop import EXIT_CANCELLED, Cancelled, from_environment

    args = build_parser().parse_args(argv)
    args.stop = from_environment()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", IvdsegWarning)  # each run reports its own skipped files
            warnings.showwarning = _one_line_warning(args, warnings.showwarning)
            return COMMANDS[args.command](args)
    except Cancelled as exc:
        print(f"ivdseg {args.command}: {exc}", file=sys.stderr)
        _emit_event(args, "cancelled", message=str(exc))
        return EXIT_CANCELLED
    except IvdsegError as exc:
        print(f"ivdseg {args.command}: {exc}", file=sys.stderr)
        _emit_event(args, "error", message=str(exc))
        return 2
    except KeyboardInterrupt:
        print(f"ivdseg {args.command}: interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. piped into head
        sys.stderr.close()
        return 0
    except OSError as exc:
        if exc.errno == 28:
            print(f"ivdseg {args.command}: the disk is full ({exc.filename or 'output'}); nothing was kept.",
                  file=sys.stderr)
            return 2
        if exc.errno in (13, 30):
            print(f"ivdseg {args.command}: {exc.filename or 'a file'} cannot be written ({exc.strerror}).",
                  file=sys.stderr)
            return 2
        raise


def _one_line_warning(args, show):
    """ivdseg's own warnings as one stderr line and, for the GUI, a ``{"event": "warning"}`` line."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, IvdsegWarning):
            print(f"ivdseg {args.command}: warning: {message}", file=sys.stderr, flush=True)
            _emit_event(args, "warning", message=str(message))
        else:  # library warnings keep their usual form
            show(message, category, filename, lineno, file, line)
    return showwarning


def _emit_event(args, event, **fields):
    mode = getattr(args, "progress", None)
    if mode == "jsonl" or (mode == "auto" and not sys.stdout.isatty()):
        print(json.dumps({"event": event, **fields}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
