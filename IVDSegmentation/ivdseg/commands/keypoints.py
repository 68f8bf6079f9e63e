"""The keypoint commands: ``ivdseg export-keypoints``, ``train-keypoints``, ``keypoints`` and ``evaluate-keypoints``
(the interactive correction of the seed design: the user fixes one point, the network moves the others)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from ivdseg.commands.inference import check_folder_of
from ivdseg.errors import IvdsegError

CHECKPOINT = "checkpoints/keypoint_state.npz"  # within the run folder: the state --resume continues from


def export_keypoints(a) -> int:
    from ivdseg.commands.training import _read_json_object
    from ivdseg.data.keypoint_data import read_samples, write_dataset
    from ivdseg.data.sample_data import sample_data_dir
    from ivdseg.progress import Reporter

    if a.output.exists() and not a.overwrite:
        raise IvdsegError(f"{a.output} already exists; choose another name or pass --overwrite.")
    check_folder_of(a.output, "the dataset")
    if len(a.shape) != 2 or any(s < 16 or s % 16 for s in a.shape):
        raise IvdsegError(f"--shape must be HEIGHT,WIDTH, each a multiple of 16, got {','.join(map(str, a.shape))}.")
    if not 0.0 < a.val_fraction < 1.0 or not 0.0 <= a.test_fraction < 1.0 or a.val_fraction + a.test_fraction >= 1:
        raise IvdsegError("--val-fraction and --test-fraction must lie in (0, 1) and [0, 1) and leave patients for "
                          "training.")
    spec = _read_json_object(a.spec, "--spec", "a keypoint export spec")
    names, samples = read_samples(spec, a.sample_data or sample_data_dir())
    meta = write_dataset(a.output, names, samples, tuple(a.shape), a.val_fraction, a.test_fraction, a.seed,
                         overwrite=a.overwrite)
    Reporter.auto(a.progress).emit("done", output=str(a.output), keypoints=len(names), sources=meta["sources"])
    return 0


def _check_train_args(a):
    for option, value, low in (("--epochs", a.epochs, 1), ("--batch-size", a.batch_size, 1),
                               ("--max-rounds", a.max_rounds, 0), ("--worst-of", a.worst_of, 1),
                               ("--max-hints", a.max_hints, 0)):
        if value < low:
            raise IvdsegError(f"{option} must be at least {low}, got {value}.")
    if not a.learning_rate > 0 or not a.sigma > 0:
        raise IvdsegError("--learning-rate and --sigma must be positive.")
    if not 0.0 < a.prompt_share <= 1.0:
        raise IvdsegError(f"--prompt-share must lie in (0, 1], got {a.prompt_share}.")
    if not a.morphology_weight >= 0:  # also refuses nan
        raise IvdsegError(f"--morphology-weight must be 0 or more, got {a.morphology_weight}.")
    state = a.output / CHECKPOINT
    if a.resume and not state.is_file():
        raise IvdsegError(f"Nothing to resume in {a.output}: {CHECKPOINT} is missing.")
    if not (a.resume or a.overwrite):
        for held in (a.output / "model", state):
            if held.exists():
                raise IvdsegError(f"{a.output} already holds a run ({held.name}); pass --resume to continue it or "
                                  "--overwrite to restart.")
    check_folder_of(a.output, "the run folder")


def train_keypoints(a) -> int:
    """Trains a hint-conditioned keypoint network and writes the package RUN/model (Keras + ONNX + card)."""
    import keras

    from ivdseg.data.keypoint_data import read_dataset
    from ivdseg.nn.keypoint_train import CheckpointError, KeypointTrainConfig, fit
    from ivdseg.nn.networks import build_keypoint_unet
    from ivdseg.progress import Reporter

    from ivdseg.commands.training import _read_json_object

    _check_train_args(a)
    extra = _read_json_object(a.card, "--card", "a JSON object merged into the card") if a.card else {}
    ds = read_dataset(a.dataset)
    train, val = ds.part("train"), ds.part("val", scored_only=True)
    if not len(train["image"]) or not len(val["image"]):
        raise IvdsegError(f"{a.dataset} has no training or no validation patient; export with more patients.")
    reporter = Reporter.auto(a.progress)
    keras.utils.set_random_seed(a.seed)
    names, shape = ds.meta["keypoints"], tuple(ds.meta["input_shape"])
    try:
        model = build_keypoint_unet(shape, len(names), depth=a.depth, base_filters=a.base_filters,
                                    hints_every_scale=a.hints_every_scale)
    except ValueError as exc:
        raise IvdsegError(str(exc)) from None
    if a.init_from and not a.resume:  # a resumed run takes every weight from its checkpoint
        _init_from(model, a.init_from, names)
    cfg = KeypointTrainConfig(mode=a.mode, loss=a.loss, epochs=a.epochs, batch_size=a.batch_size, learning_rate=a.learning_rate,
                              sigma_px=a.sigma, worst_of=a.worst_of, max_rounds=a.max_rounds,
                              prompt_share=a.prompt_share, max_hints=a.max_hints, augment=not a.no_augment,
                              morphology_weight=a.morphology_weight,
                              patience=a.patience, seed=a.seed)
    checkpoint = a.output / CHECKPOINT
    if not a.resume:  # --overwrite: a stale state must not be resumed into this run later
        checkpoint.unlink(missing_ok=True)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    settings = {"keypoints": names, "input_shape": list(shape), "depth": a.depth, "base_filters": a.base_filters,
                "hints_every_scale": a.hints_every_scale}
    try:
        history = fit(model, train["image"][..., None], train["points"], cfg,
                      on_epoch=lambda r: reporter.emit("epoch", epochs=a.epochs, **r),
                      validation=(val["image"][..., None], val["points"]), should_stop=lambda: a.stop.requested,
                      checkpoint=checkpoint, resume=a.resume, settings=settings)
    except CheckpointError as exc:
        raise IvdsegError(f"Cannot resume {a.output}: {exc}; repeat the run's settings or start afresh with "
                          "--overwrite.") from None
    if not history:
        raise IvdsegError(f"Training in {a.output} stopped before the first epoch ended; no model was kept.")
    best = next((r for r in reversed(history) if r.get("best")), {})  # the epoch whose weights fit() kept
    trained, model = model, build_keypoint_unet(shape, len(names), depth=a.depth, base_filters=a.base_filters,
                                                hints_every_scale=a.hints_every_scale)
    model.set_weights(trained.get_weights())  # the package holds the network, not the optimizer's state
    if a.weights == "float16":  # scored as it will be stored
        from ivdseg.models.half import round_weights

        round_weights(model)
    card = {
        "task": "keypoints", "name": a.name, "version": a.model_version, "network": "keypoint_unet",
        "architecture": {"depth": a.depth, "base_filters": a.base_filters, "activation": "leaky_relu",
                         "hints": "every_scale" if a.hints_every_scale else "input"},
        "input_shape": list(shape), "channels": 1, "normalization": ds.meta["normalization"],
        "resize": "letterbox", "slice_plane": a.plane, "keypoints": names, "hint_sigma_px": a.sigma,
        "parameters": int(model.count_params()),
        "training": {"mode": a.mode, "loss": a.loss, "morphology_weight": a.morphology_weight,
                     "epochs_run": len(history), "best_epoch": best.get("epoch"),
                     "learning_rate": a.learning_rate, "batch_size": a.batch_size, "augment": not a.no_augment,
                     "worst_of": a.worst_of, "max_rounds": a.max_rounds, "prompt_share": a.prompt_share,
                     "max_hints": a.max_hints or len(names),
                     "seed": a.seed, "seconds": history[-1]["seconds"], "sources": ds.meta["sources"],
                     "init_from": Path(a.init_from).name if a.init_from else None,
                     "train_patients": len(ds.splits["train"]), "val_patients": len(ds.splits["val"]),
                     "test_patients": len(ds.splits.get("test", [])),
                     "command": "ivdseg train-keypoints DATASET -o RUN " + " ".join(_options(a))},
    }
    card.update(extra)
    chain = _choose_decoding(model, ds, a.sigma, card)
    for part, key in (("val", "validation"), ("test", "test")):
        if ds.splits.get(part):
            card[key] = correction_table(model, ds, part, a.sigma, chain=chain)
    from ivdseg.io.atomic import write_json
    from ivdseg.nn.train import _save_with_onnx

    _save_with_onnx(model, card, a.output / "model", {}, reporter, weights=a.weights)
    write_json(a.output / "history.json", history)
    reporter.emit("done", package=str(a.output / "model"), best_epoch=best.get("epoch"),
                  test=card.get("test", {}).get("overall"))
    return 0


def _choose_decoding(run, ds, sigma: float, card: dict, structures=("chain", "columns")):
    """Decoding as a chain, as columns or one peak each, as the validation samples choose; into ``card``."""
    from ivdseg.eval.keypoints_eval import choose_decoding

    val = ds.part("val", scored_only=True)
    chain, card["decode"] = choose_decoding(run, ds.part("train")["points"], val["image"][..., None], val["points"],
                                            sigma, names=ds.meta["keypoints"], structures=structures)
    return chain


def _init_from(model, package, names):
    """Starts ``model`` from a keypoint package of the same keypoints and network shape (e.g. one trained the other
    way of simulating the user)."""
    from ivdseg.models.package import load_package, resolve_model

    source, card = load_package(resolve_model(package))
    weights, own = source.get_weights(), model.get_weights()
    if card.get("keypoints") != names or [w.shape for w in weights] != [w.shape for w in own]:
        raise IvdsegError(f"--init-from {package} has other keypoints or another network shape; give a package "
                          "trained on this dataset with the same --depth, --base-filters and "
                          "--hints-every-scale.")
    model.set_weights(weights)


def _options(a) -> list[str]:
    out = [f"--mode {a.mode}", f"--loss {a.loss}", f"--epochs {a.epochs}", f"--batch-size {a.batch_size}",
           f"--learning-rate {a.learning_rate}", f"--sigma {a.sigma}", f"--depth {a.depth}",
           f"--base-filters {a.base_filters}", f"--patience {a.patience}", f"--plane {a.plane}", f"--seed {a.seed}"]
    if a.mode == "revise":
        out += [f"--worst-of {a.worst_of}", f"--max-rounds {a.max_rounds}"]
    else:
        out += [f"--prompt-share {a.prompt_share}"] + ([f"--max-hints {a.max_hints}"] if a.max_hints else [])
    out += ["--hints-every-scale"] if a.hints_every_scale else []
    out += [f"--morphology-weight {a.morphology_weight}"] if a.morphology_weight else []
    out += ["--weights float16"] if a.weights == "float16" else []
    out += [f"--init-from {Path(a.init_from).name}"] if a.init_from else []  # the name only: no local path
    return out + (["--no-augment"] if a.no_augment else [])


def correction_table(run, ds, part: str, sigma: float, rounds: int = 3, chain=None) -> dict:
    """Mean radial error per source and overall after 0..``rounds`` corrections (model-revised and manual-only), and
    for sources with Cobb angles, the angles' SMAPE from the predicted corners; ``chain``: the package's chain
    prior (None: one peak each)."""
    from ivdseg.eval.keypoints_eval import correction_curves

    data = ds.part(part, scored_only=True)
    if not len(data["image"]):
        raise IvdsegError(f"The dataset has no {part} sample to score.")
    curves = correction_curves(run, data["image"][..., None], data["points"], data["scale_rc"],
                               data["spacing_rc"], sigma, rounds, chain)
    sources = np.array([ds.meta["cases"][i]["source"] for i in data["case"]])
    out = {"rounds": rounds, "per_source": {}}
    for source in sorted(set(sources)):
        keep = sources == source
        unit = "mm" if np.isfinite(data["spacing_rc"][keep]).all() else "px"
        entry = {"cases": int(keep.sum()), "unit": unit,
                 "model": [float(v) for v in curves["model"][:, keep].mean(axis=1)],
                 "manual": [float(v) for v in curves["manual"][:, keep].mean(axis=1)]}
        if np.isfinite(data["angles"][keep]).all():
            entry["cobb"] = _cobb_entry(curves["first"][keep], data, keep)
        out["per_source"][source] = entry
    out["overall"] = {"cases": int(len(sources))}
    return out


def _cobb_entry(first_in, data, keep) -> dict:
    """Cobb angles of the unhinted prediction (network pixels, (N, K, 2)) against the dataset's, per angle."""
    from ivdseg.eval.keypoints_eval import cobb_angles, smape

    native = (first_in - data["offset_rc"][keep][:, None]) / data["scale_rc"][keep][:, None]
    predicted = np.array([cobb_angles(points[:, ::-1]) for points in native])
    truth = data["angles"][keep]
    return {"smape": smape(predicted, truth), "mae_deg": [float(v) for v in np.abs(predicted - truth).mean(axis=0)]}


def _model_and_dataset(a):
    """The keypoint package ``a.model`` opened for inference, and the dataset ``a.dataset`` made for it."""
    from ivdseg.data.keypoint_data import read_dataset
    from ivdseg.inference.backends import load_backend
    from ivdseg.inference.keypoint_predict import KeypointPredictor
    from ivdseg.models.package import resolve_model

    predictor = KeypointPredictor(load_backend(resolve_model(a.model), a.backend, a.device))
    ds = read_dataset(a.dataset)
    if ds.meta["keypoints"] != predictor.names or tuple(ds.meta["input_shape"]) != predictor.shape:
        raise IvdsegError(f"{a.dataset} holds other keypoints or another input shape than the model "
                          f"{predictor.card['name']}; export the dataset with the model's settings.")
    return predictor, ds


def evaluate_keypoints(a) -> int:
    if a.rounds < 1:
        raise IvdsegError(f"--rounds must be at least 1, got {a.rounds}.")
    if a.json:
        check_folder_of(a.json, "--json")
    predictor, ds = _model_and_dataset(a)
    table = correction_table(predictor.backend.predict, ds, a.split, predictor.sigma, a.rounds, predictor.chain)
    how = "one peak each" if predictor.chain is None else \
        f"decoded as {_structure(predictor.card)}, weight {predictor.chain.weight:g}"
    print(format_table(table, f"{predictor.card['name']} {predictor.card['version']} ({how}), {a.split} patients"))
    if a.json:
        from ivdseg.io.atomic import write_json

        write_json(a.json, table)
    return 0


def fit_chain(a) -> int:
    """A copy of a keypoint package whose card decodes its heatmaps as a chain or as columns fitted to the dataset's
    training points, or one peak each, as the dataset's validation samples choose; its validation and test tables
    redone."""
    import shutil

    from ivdseg.inference.keypoint_chain import column_parents
    from ivdseg.io.atomic import atomic_folder
    from ivdseg.models.package import package_folder, resolve_model, update_card

    if a.output.exists() and not a.overwrite:  # said before any work
        raise IvdsegError(f"{a.output} already exists; choose another name or pass --overwrite.")
    check_folder_of(a.output, "the package")
    predictor, ds = _model_and_dataset(a)
    if not ds.splits.get("val") or not ds.splits.get("train"):
        raise IvdsegError(f"{a.dataset} has no training or no validation patient to fit and choose the decoding.")
    if a.structure == "columns" and column_parents(ds.meta["keypoints"]) is None:
        raise IvdsegError(f"The keypoints of {a.dataset} do not come in levels of the same parts (such as "
                          "'T1 upper left', 'T1 upper right', 'T2 upper left', ...): --structure columns needs them.")
    card = {}
    chain = _choose_decoding(predictor.backend.predict, ds, predictor.sigma, card,
                             ("chain", "columns") if a.structure == "auto" else (a.structure,))
    card["decode"]["command"] = f"ivdseg fit-chain PACKAGE {Path(a.dataset).name}" + (
        f" --structure {a.structure}" if a.structure != "auto" else "")
    for part, key in (("val", "validation"), ("test", "test")):
        if ds.splits.get(part):
            card[key] = correction_table(predictor.backend.predict, ds, part, predictor.sigma, chain=chain)
    major, minor, *_ = (str(predictor.card["version"]).split(".") + ["0", "0"])
    card["version"] = a.model_version or f"{major}.{int(minor) + 1 if minor.isdigit() else 1}.0"
    with package_folder(resolve_model(a.model)) as source, atomic_folder(a.output, overwrite=a.overwrite) as staging:
        for f in source.iterdir():
            if f.is_file():
                shutil.copy2(f, staging / f.name)
        update_card(staging, card)
    scores = ", ".join(f"{k} {v:.2f}" for k, v in card["decode"]["validation_mre_px"].items())
    print(f"{a.output}: {card['decode'].get('structure', card['decode']['method'])} decoding (validation, mean radial "
          f"error over 0..3 corrections in network pixels: {scores})")
    return 0


def _structure(card: dict) -> str:
    """How the card's decode entry ties the keypoints, in words (cards before the columns have no "parents")."""
    return "columns" if (card.get("decode") or {}).get("parents") else "a chain"


def format_table(table: dict, title: str) -> str:
    """Markdown: one row per source and correction count, model-revised against manual-only."""
    lines = [f"Mean radial error, {title}:", "",
             "| source | cases | corrections | model revises the rest | by hand only | ratio |", "|---|---|---|---|---|---|"]
    for source, e in table["per_source"].items():
        for r, (m, h) in enumerate(zip(e["model"], e["manual"])):
            lines.append(f"| {source} | {e['cases']} | {r} | {m:.2f} {e['unit']} | {h:.2f} {e['unit']} | "
                         f"{m / h if h else float('nan'):.2f} |")
    for source, e in table["per_source"].items():
        if "cobb" in e:
            mae = " / ".join(f"{v:.1f}" for v in e["cobb"]["mae_deg"])
            lines += ["", f"{source}: Cobb angles from the predicted corners (no correction): SMAPE "
                          f"{e['cobb']['smape']:.1f} %, mean absolute error {mae} degrees (largest / upper / lower)"]
    return "\n".join(lines)


def _fix_arg(text: str):
    """"L4-L5=10.5,-20,30" -> ("L4-L5", (10.5, -20.0, 30.0))."""
    label, sep, values = text.rpartition("=")
    try:
        coords = tuple(float(v) for v in values.split(","))
    except ValueError:
        coords = ()
    if not sep or not label or len(coords) not in (2, 3):
        raise IvdsegError(f"--fix takes LABEL=X,Y or LABEL=X,Y,Z, got {text!r}.")
    return label, coords


def keypoints(a) -> int:
    """``ivdseg keypoints IMAGE --model PKG -o OUT.mrk.json [--fix LABEL=X,Y[,Z] ...] [--csv OUT.csv]``."""
    from ivdseg.inference.backends import load_backend
    from ivdseg.inference.keypoint_predict import KeypointPredictor, read_keypoint_image
    from ivdseg.io.markups import Point, write_points
    from ivdseg.models.package import resolve_model

    if not a.output.name.lower().endswith(".mrk.json"):
        raise IvdsegError(f"{a.output}: the output must end in .mrk.json (a Slicer point list).")
    for path, option in ((a.output, "-o"), (a.csv, "--csv")):
        if path is not None:
            check_folder_of(path, option)
            if path.exists() and not a.overwrite:
                raise IvdsegError(f"{path} already exists; pass --overwrite to replace it.")
    fixes = [_fix_arg(t) for t in a.fix]
    started = time.perf_counter()
    predictor = KeypointPredictor(load_backend(resolve_model(a.model), a.backend, a.device))
    image = read_keypoint_image(a.input, predictor.card, series_uid=a.series)
    if len(fixes) > len(predictor.names):
        raise IvdsegError(f"{len(fixes)} --fix points, but the model has only {len(predictor.names)} keypoints.")
    fixed = {}
    for label, coords in fixes:
        k = predictor.index_of(label)
        if k in fixed:
            raise IvdsegError(f"--fix gives {label} twice.")
        if image.volume and len(coords) != 3:
            raise IvdsegError(f"--fix {label}: a volume takes patient coordinates X,Y,Z (RAS mm).")
        if not image.volume and len(coords) != 2:
            raise IvdsegError(f"--fix {label}: a 2D image takes the pixel column and row X,Y.")
        rc = image.from_ras(coords)[0] if image.volume else np.array([coords[1], coords[0]])
        if not image.inside(rc)[0]:
            raise IvdsegError(f"--fix {label}={','.join(map(str, coords))} lies outside the image.")
        fixed[k] = rc
    points, peaks = predictor.predict(image.pixels, fixed)
    ras = image.to_ras(points)
    write_points(a.output, [Point(name, tuple(r), f"peak {p:.2f}", locked=k in fixed)
                            for k, (name, r, p) in enumerate(zip(predictor.names, ras, peaks))],
                 name=f"{predictor.card['name']} keypoints", overwrite=a.overwrite)
    if a.csv:
        _write_csv(a.csv, predictor.names, points, ras, image.volume, a.overwrite)
    seconds = time.perf_counter() - started
    from ivdseg.progress import Reporter

    Reporter.auto(a.progress).emit("done", output=str(a.output), keypoints=len(points), fixed=len(fixed),
                                   seconds=round(seconds, 3))
    return 0


def _write_csv(path, names, points_rc, ras, volume, overwrite):
    from ivdseg.io.atomic import atomic_write

    def write(temp):
        with open(temp, "w", encoding="utf-8", newline="") as f:
            f.write("label,x,y,z\n" if volume else "label,x,y\n")
            for name, p, r in zip(names, points_rc, ras):
                f.write(f"{name},{r[0]:.3f},{r[1]:.3f},{r[2]:.3f}\n" if volume else f"{name},{p[1]:.3f},{p[0]:.3f}\n")

    atomic_write(Path(path), write, overwrite=overwrite)


def serve_keypoints(a) -> int:
    """A keypoint model kept loaded for the Slicer module: one JSON request per stdin line
    ({"fixed": {label: [x, y, z]}} in RAS mm, on the image given at start), one JSON answer per stdout line
    ({"points": [[x, y, z], ...] in the model's keypoint order, "seconds": s}); an empty line or the end of stdin
    ends it."""
    from ivdseg.inference.backends import load_backend
    from ivdseg.inference.keypoint_predict import KeypointPredictor, read_keypoint_image
    from ivdseg.models.package import resolve_model

    predictor = KeypointPredictor(load_backend(resolve_model(a.model), a.backend, a.device))
    image = read_keypoint_image(a.input, predictor.card)
    print(json.dumps({"event": "ready", "keypoints": predictor.names}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        started = time.perf_counter()
        try:
            request = json.loads(line)
            fixed = {predictor.index_of(k): image.from_ras(v)[0] for k, v in request.get("fixed", {}).items()}
            points, _ = predictor.predict(image.pixels, fixed)
            answer = {"points": image.to_ras(points).tolist(), "seconds": round(time.perf_counter() - started, 4)}
        except (IvdsegError, ValueError, TypeError, AttributeError) as exc:
            answer = {"error": str(exc)}
        print(json.dumps(answer), flush=True)
    return 0
