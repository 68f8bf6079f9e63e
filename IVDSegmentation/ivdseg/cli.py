"""The ``ivdseg`` command: the engine of the Slicer module for batch work.

Errors a user can cause end in one sentence on stderr and exit code 2, never a traceback; a mistake on the command
line is found before any work, so nothing (no dataset, run folder or key file) is left behind. Warnings (e.g. a
damaged DICOM file that was skipped) are one line each on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ivdseg.commands import batch, evaluation, inference, keypoints, training
from ivdseg.errors import IvdsegError, IvdsegWarning
from ivdseg.nn.augment import SOURCE_SAMPLING


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
    e.add_argument("--spec", type=Path,
                   help="JSON with 'classes', several 'sources' (kinds slices, volumes, pairs, rle_csv: a Kaggle RLE "
                        "table such as UW-Madison's train.csv) and 'overlapping' (classes may overlap; see README)")
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
    e.add_argument("--drop-unlabelled", action="store_true",
                   help="drop the slices without any mask (default: keep them, and the summary counts them). "
                        "Warning: in the seed's UW-Madison experiments, dropping the slices without any mask made "
                        "the network overfit: it never learns to predict nothing")
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
    t.add_argument("--crossval", type=Path,
                   help="crossval.json of an ivdseg crossval run with these settings: its held-out figures go into "
                        "the card")

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
    n = sub.add_parser("ensemble", help="average trained models into one package, or cross-validate that average")
    n.add_argument("dataset", type=Path, help="the dataset the members were trained on (its validation patients "
                                              "choose the post-processing, its held-out patients score it)")
    n.add_argument("-o", "--output", type=Path, required=True,
                   help="the ensemble's package folder (--members) or cross-validation folder (--crossvals)")
    members = n.add_mutually_exclusive_group(required=True)
    members.add_argument("--members", nargs="+", metavar="PKG", help="model packages of the same input and classes")
    members.add_argument("--crossvals", nargs="+", type=Path, metavar="CV",
                         help="ivdseg crossval folders of the same folds (by source: e.g. one recipe, other seeds; "
                              "by patient: the same --seed, which deals the folds): each fold's models are averaged "
                              "and scored on that fold's held-out patients")
    n.add_argument("--by", choices=["source", "patient"], default="source", help="with --crossvals: their --by")
    n.add_argument("--folds", type=int, default=5, help="with --crossvals --by patient: their --folds")
    n.add_argument("--seed", type=int, default=0, help="with --crossvals --by patient: their --seed")
    n.add_argument("--val-fraction", type=float, default=0.15, help="with --crossvals --by patient: theirs")
    n.add_argument("--name", default="ivdseg-ensemble")
    n.add_argument("--model-version", default="1.0.0")
    n.add_argument("--batch-size", type=int, default=16)
    n.add_argument("--overwrite", action="store_true")
    n.add_argument("--progress", choices=["auto", "jsonl", "text", "none"], default="auto")
    _add_evaluate(sub)
    _add_inference_commands(sub)
    _add_keypoint_commands(sub)
    return p


def _add_keypoint_commands(sub):
    e = sub.add_parser("export-keypoints", help="write a de-identified keypoint dataset (images + named points)")
    e.add_argument("output", type=Path, help="dataset folder to create")
    e.add_argument("--spec", type=Path, required=True,
                   help="JSON with 'keypoints' and 'sources' (Resources/recipes/*.keypoints.json)")
    e.add_argument("--shape", type=_sizes, default=(256, 256), help="network input HEIGHT,WIDTH (e.g. 512,256)")
    e.add_argument("--val-fraction", type=float, default=0.15)
    e.add_argument("--test-fraction", type=float, default=0.15)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--sample-data", type=Path, help="what {sample_data} in the spec stands for")
    e.add_argument("--overwrite", action="store_true")
    e.add_argument("--progress", choices=["auto", "jsonl", "text", "none"], default="auto")

    t = sub.add_parser("train-keypoints", help="train a hint-conditioned keypoint network; writes RUN/model")
    t.add_argument("dataset", type=Path)
    t.add_argument("-o", "--output", type=Path, required=True, help="run folder")
    t.add_argument("--mode", choices=["revise", "prompt"], default="revise",
                   help="revise: predict, fix the worst point, learn on the revised pass; prompt: hints before the "
                        "only pass, in a share of the samples")
    t.add_argument("--loss", choices=["bce", "focal"], default="bce",
                   help="heatmap loss: binary cross-entropy, or its focal variant for Gaussian targets")
    t.add_argument("--morphology-weight", type=float, default=0.0,
                   help="add this weight times a shape term: the vector from each keypoint to the next (soft-argmax "
                        "of the heatmaps) must match the true one, as a share of the image side (0: none)")
    t.add_argument("--epochs", type=int, default=100)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--learning-rate", type=float, default=1e-3)
    t.add_argument("--sigma", type=float, default=3.0, help="heatmap and hint Gaussian, input pixels")
    t.add_argument("--depth", type=int, default=5)
    t.add_argument("--base-filters", type=int, default=16)
    t.add_argument("--hints-every-scale", action="store_true",
                   help="also feed the input (image and hints), max-pooled, to every deeper stage of the U-Net")
    t.add_argument("--worst-of", type=int, default=1, help="revise: hint one of the N worst points, at random")
    t.add_argument("--max-rounds", type=int, default=2, help="revise: correction rounds per batch, 0..N")
    t.add_argument("--prompt-share", type=float, default=0.5, help="prompt: share of samples given hints")
    t.add_argument("--weights", choices=["float32", "float16"], default="float32",
                   help="how the package stores its weights: float16 halves its size (the chosen weights are rounded "
                        "before the validation and test samples score them)")
    t.add_argument("--max-hints", type=int, default=0,
                   help="prompt: a hinted sample gets 1..N true points (0, the default: up to every keypoint)")
    t.add_argument("--patience", type=int, default=0, help="stop after N epochs without a better validation error")
    t.add_argument("--no-augment", action="store_true")
    t.add_argument("--init-from", help="keypoint package whose weights start training (same keypoints and shape)")
    t.add_argument("--plane", choices=["sagittal", "image"], default="sagittal",
                   help="what the model reads: a volume's mid-sagittal slice (or a sagittal picture), or 2D pictures")
    t.add_argument("--card", type=Path, help="JSON merged into the card (licence, citations, description)")
    t.add_argument("--name", default="ivdseg-keypoints")
    t.add_argument("--model-version", default="1.0.0")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true",
                   help="continue a stopped or killed run from its last whole epoch (--epochs and --patience may "
                        "change, nothing else)")
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--progress", choices=["auto", "jsonl", "text", "none"], default="auto")

    k = sub.add_parser("keypoints", help="the keypoints of an image, with the user's fixed points as hints")
    k.add_argument("input", type=Path, help="volume (NIfTI, NRRD, DICOM folder: its mid-sagittal slice) or PNG/JPG")
    k.add_argument("--model", required=True, help="keypoint package folder/.zip or bundled name")
    k.add_argument("-o", "--output", type=Path, required=True, help="Slicer point list .mrk.json")
    k.add_argument("--fix", action="append", default=[], metavar="LABEL=X,Y[,Z]",
                   help="a point the user placed: patient coordinates (RAS mm) for a volume, pixel column,row for a "
                        "2D image; kept exactly and locked (repeatable)")
    k.add_argument("--csv", type=Path, help="also write label,x,y[,z] per keypoint (pixels for a 2D image)")
    k.add_argument("--series", help="SeriesInstanceUID when the DICOM folder holds several")
    k.add_argument("--backend", choices=["auto", "onnx", "tensorflow"], default="auto")
    k.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    k.add_argument("--overwrite", action="store_true")
    k.add_argument("--progress", choices=["auto", "jsonl", "text", "none"], default="auto")

    s = sub.add_parser("serve-keypoints", help="keep a keypoint model loaded on one image; JSON requests on stdin "
                                               "(what the Slicer module's point correction uses)")
    s.add_argument("input", type=Path)
    s.add_argument("--model", required=True)
    s.add_argument("--backend", choices=["auto", "onnx", "tensorflow"], default="auto")
    s.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")

    v = sub.add_parser("evaluate-keypoints", help="mean radial error before and after 1..3 simulated corrections, "
                                                  "the model revising the rest against corrections by hand only")
    v.add_argument("model")
    v.add_argument("dataset", type=Path)
    v.add_argument("--split", choices=["val", "test", "train", "all"], default="test")
    v.add_argument("--rounds", type=int, default=3)
    v.add_argument("--backend", choices=["auto", "onnx", "tensorflow"], default="auto")
    v.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    v.add_argument("--json", type=Path, help="also write the figures to this JSON file")

    f = sub.add_parser("fit-chain", help="a copy of a keypoint package that decodes its heatmaps as a chain (or as "
                                         "columns: each part tied to the same part of the level before) fitted to "
                                         "a dataset's training points, if its validation samples prefer it")
    f.add_argument("model")
    f.add_argument("dataset", type=Path, help="the keypoint dataset the package was trained on")
    f.add_argument("-o", "--output", type=Path, required=True, help="the new package folder")
    f.add_argument("--model-version", help="the new package's version (default: the next minor version)")
    f.add_argument("--structure", choices=["auto", "chain", "columns"], default="auto",
                   help="the ways to tie the keypoints that validation may choose from (auto: the chain, and columns "
                        "where the keypoint names come in levels of the same parts)")
    f.add_argument("--backend", choices=["auto", "onnx", "tensorflow"], default="auto")
    f.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    f.add_argument("--overwrite", action="store_true")


NETWORK_NAMES = ["unet2d", "deeplabv3plus", "res_se_unet", *(f"efficientnet_b{k}_unet" for k in range(8))]


def _training_args(t):
    """The options of train and crossval: the network, the optimisation and the run folder's handling."""
    t.add_argument("--network", default="unet2d", metavar="NETWORK", choices=NETWORK_NAMES,
                   help="unet2d, deeplabv3plus, res_se_unet, or a U-Net on a keras.applications EfficientNet "
                        "encoder: efficientnet_b0_unet ... efficientnet_b7_unet")
    t.add_argument("--encoder-weights", metavar="FILE",
                   help="ImageNet weights of the EfficientNet encoder, from a local file (the Keras "
                        "..._notop.h5); never downloaded. Default: random initialisation")
    t.add_argument("--context-slices", type=int, default=0, metavar="N",
                   help="2.5D: each slice with N neighbours on each side as extra input channels (edge slices repeat "
                        "the nearest); the card records it and inference repeats it")
    t.add_argument("--size", type=int, default=256, help="input size: 128, 192, 256 or another size the dataset holds")
    t.add_argument("--activation", default="relu", choices=["relu", "swish", "mish"])
    t.add_argument("--depth", type=int, default=4)
    t.add_argument("--base-filters", type=int, default=16)
    t.add_argument("--dropout", type=float, default=0.0)
    t.add_argument("--loss", default="dice_ce", choices=["dice", "dice_ce"],
                   help="dice_ce: soft Dice + cross-entropy (binary per class when the dataset's classes overlap)")
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
    t.add_argument("--source-sampling", choices=list(SOURCE_SAMPLING), default="slices",
                   help="how training batches draw on the dataset's sources: slices (every slice alike), sqrt (a "
                        "source in proportion to the square root of its slice count: a small source drawn more "
                        "often), equal (every source alike)")
    t.add_argument("--mixed-precision", choices=["auto", "on", "off"], default="auto")
    t.add_argument("--weights", choices=["float32", "float16"], default="float32",
                   help="how the package stores its weights: float16 halves its size (the network still computes in "
                        "float32; the chosen weights are rounded before the validation and test patients score them)")
    t.add_argument("--init-from", help="model package whose weights start training (fine-tuning); for crossval, the "
                                       "folder of an earlier crossval with the same folds: each fold starts from "
                                       "its own fold's model (a two-stage recipe, cross-validated as a whole)")
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
    v.add_argument("--choose-tta", action="store_true",
                   help="with --split val: compare test-time augmentation (in-plane scales) with none and write the "
                        "choice into the model's card (enabled only if it raises validation Dice)")
    v.add_argument("--record", action="store_true",
                   help="with --split test: write these figures into the model's card as its test figures, as "
                        "shipped (with the card's test-time augmentation); the figures without it are kept beside them")

    lv = sub.add_parser("evaluate-levels", help="level accuracy and disc-centre error of segment --levels on a "
                                                "dataset whose labels say the levels")
    lv.add_argument("dataset", type=Path, help="a dataset with the classes 'intervertebral disc' and "
                                               "'lumbosacral disc' (Resources/recipes/ivd-lumbosacral-2d.sh)")
    _model_on_dataset_args(lv, "the disc model (default: the bundled one); its card names the anchor model")
    lv.add_argument("--choose-review-threshold", action="store_true",
                    help="with --split val: choose the uncertainty above which a disc is flagged for review and "
                         "write it into the disc model's card")

    ms = sub.add_parser("evaluate-measurements", help="the disc table of a model (heights, disc height index, signal "
                                                      "ratio) against the same table made from the manual labels")
    ms.add_argument("dataset", type=Path, help="a dataset with an 'intervertebral disc' class (the disc height index "
                                               "and signal ratio also need its vertebrae or canal)")
    _model_on_dataset_args(ms, "model package folder/.zip or bundled name (default: the bundled disc model)")
    ms.add_argument("--record", action="store_true",
                    help="with --split test: write the agreement into the model's card")


def _model_on_dataset_args(p, model_help: str) -> None:
    """The options of a command that runs a model over a dataset split (evaluate-levels, evaluate-measurements)."""
    p.add_argument("--model", help=model_help)
    p.add_argument("--split", choices=["val", "test", "all"], default="test")
    p.add_argument("--backend", choices=["auto", "onnx", "tensorflow"], default="auto")
    p.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")


def _add_inference_commands(sub):
    g = sub.add_parser("segment", help="segment the discs of a volume (DICOM folder, NIfTI or NRRD)")
    g.add_argument("input", type=Path, help="DICOM folder, .nii/.nii.gz or .nrrd, or 2D images (a PNG/JPG or a "
                                            "folder of them, one slice each)")
    g.add_argument("-o", "--output", type=Path, required=True,
                   help="labelmap .nii.gz or .nrrd (+ a .json naming the classes), or a Slicer segmentation .seg.nrrd")
    _inference_args(g)
    g.add_argument("--series", help="SeriesInstanceUID when the folder holds several series")
    g.add_argument("--overlay", type=Path, help="also write a mid-sagittal PNG with the outlines")
    g.add_argument("--rle-csv", type=Path, metavar="OUT.csv",
                   help="also write the masks as a run-length-encoded table (id,class,segmentation; one row per slice "
                        "and class, an empty cell where the class is absent), the layout of the RLE tables export reads")
    g.add_argument("--label-bits", action="store_true",
                   help="for a model whose classes overlap: the labelmap keeps one bit per class (bit k = class k + 1) "
                        "instead of one class per voxel by the card's priority")
    g.add_argument("--levels", "--instances", action="store_true",
                   help="the instances the model's card names: one label per disc, from superior to inferior, named "
                        "by level when the anchor is found; right and left of a paired organ")
    g.add_argument("--points", type=Path, help="also write the disc centres as a Slicer point list (.mrk.json); "
                                               "implies --levels")
    g.add_argument("--table", type=Path, help="also write one row of measurements per disc (.csv); implies --levels")
    g.add_argument("--overwrite", action="store_true")

    d = sub.add_parser("demo", help="segment a real sample case with the bundled model and print its Dice")
    d.add_argument("--output-dir", type=Path, default=Path("ivdseg-demo"))
    d.add_argument("--sample-data", type=Path, help="sample data folder (default IVDSEG_SAMPLE_DATA or ../shared/data)")
    _inference_args(d)

    r = sub.add_parser("series", help="list the DICOM series of a folder")
    r.add_argument("folder", type=Path)

    _inference_args(batch.add_parser(sub))


def _inference_args(g):
    g.add_argument("--model", help="model package folder/.zip or bundled name (default: the bundled disc model)")
    g.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    g.add_argument("--backend", choices=["auto", "onnx", "tensorflow"], default="auto")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--no-tta", action="store_true",
                   help="skip the test-time augmentation the model's card enables (faster, slightly less accurate)")
    g.add_argument("--progress", choices=["auto", "jsonl", "text", "none"], default="auto")


COMMANDS = {"export": training.export, "train": training.train, "crossval": training.crossval,
            "ensemble": training.ensemble,
            "evaluate": training.evaluate, "evaluate-levels": evaluation.evaluate_levels,
            "evaluate-measurements": evaluation.evaluate_measurements, "segment": inference.segment,
            "demo": inference.demo,
            "series": inference.series, "export-keypoints": keypoints.export_keypoints,
            "train-keypoints": keypoints.train_keypoints, "keypoints": keypoints.keypoints,
            "serve-keypoints": keypoints.serve_keypoints, "evaluate-keypoints": keypoints.evaluate_keypoints,
            "fit-chain": keypoints.fit_chain,
            "batch": batch.batch}


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
