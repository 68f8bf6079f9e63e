"""Keras training on a dataset folder, ending in a model package.

Keeps the best models by validation Dice (only the best N checkpoints), a ``last.keras`` for
``--resume``, a CSV log, early stopping, and progress as JSON lines. Every checkpoint is written to a
temporary name and renamed, so a kill at any moment leaves the last good checkpoint intact. A stop request
(:mod:`ivdseg.stop`: the GUI's Stop, SIGTERM, Ctrl-C) only sets a flag that training reads between batches, so
no save is ever interrupted; training then packages the best model so far.
"""

from __future__ import annotations

import json
import math
import shlex
import time
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_write, write_json
from ivdseg.data.preprocess import DEFAULT_PERCENTILES
from ivdseg.nn.train_data import load_inputs, say_context_gaps, say_unlabelled, validation_dice
from ivdseg.progress import Reporter
from ivdseg.stop import StopRequest


@dataclass
class TrainConfig:
    network: str = "unet2d"
    size: int = 256
    activation: str = "relu"
    depth: int = 4
    base_filters: int = 16
    dropout: float = 0.0
    loss: str = "dice_ce"
    epochs: int = 50
    batch_size: int = 8
    learning_rate: float = 1e-3
    steps_per_epoch: int | None = None
    patience: int = 15
    keep_best: int = 3
    seed: int = 0
    fold: int | None = None
    augment: bool = True
    augmentation: str = "standard"  # the preset of ivdseg.nn.augment.PRESETS: "standard" or "scanner"
    source_sampling: str = "slices"  # how batches draw on the sources: ivdseg.nn.augment.SOURCE_SAMPLING
    mixed_precision: str = "auto"  # auto: on when a GPU is used
    init_from: str | None = None  # a model package whose weights start the training (fine-tuning)
    context_slices: int = 0  # neighbouring slices on each side fed as extra channels (2.5D); the card records it
    encoder_weights: str | None = None  # local ImageNet weights file of a keras.applications encoder, never downloaded
    weights: str = "float32"  # how the package stores its weights: "float16" halves it (ivdseg.models.half)
    name: str = "ivdseg-model"
    version: str = "1.0.0"
    card_extra: dict = field(default_factory=dict)  # licence, citations, description for the card


def check_config(cfg: TrainConfig) -> None:
    """Refuses settings out of range before any work (the message names the ``ivdseg train`` option).

    Raises:
        IvdsegError: the first setting out of range.
    """
    at_least_one = {"--epochs": cfg.epochs, "--batch-size": cfg.batch_size, "--patience": cfg.patience,
                    "--keep-best": cfg.keep_best, "--depth": cfg.depth, "--base-filters": cfg.base_filters}
    if cfg.steps_per_epoch is not None:
        at_least_one["--steps-per-epoch"] = cfg.steps_per_epoch
    for option, value in at_least_one.items():
        if value < 1:
            raise IvdsegError(f"{option} must be at least 1, got {value}.")
    if not (math.isfinite(cfg.learning_rate) and cfg.learning_rate > 0):
        raise IvdsegError(f"--learning-rate must be a positive number, got {cfg.learning_rate}.")
    if not 0.0 <= cfg.dropout < 1.0:
        raise IvdsegError(f"--dropout must lie in [0, 1), got {cfg.dropout}.")
    if cfg.size < 16 or cfg.size % 16:
        raise IvdsegError(f"--size must be a multiple of 16 (the networks halve it four times), got {cfg.size}.")
    from ivdseg.nn.augment import PRESETS, SOURCE_SAMPLING

    if cfg.augmentation not in PRESETS:
        raise IvdsegError(f"--augmentation must be one of {', '.join(PRESETS)}, got {cfg.augmentation!r}.")
    if cfg.source_sampling not in SOURCE_SAMPLING:
        raise IvdsegError(f"--source-sampling must be one of {', '.join(SOURCE_SAMPLING)}, "
                          f"got {cfg.source_sampling!r}.")
    from ivdseg.models.half import WEIGHT_DTYPES

    if cfg.weights not in WEIGHT_DTYPES:
        raise IvdsegError(f"--weights must be one of {', '.join(WEIGHT_DTYPES)}, got {cfg.weights!r}.")
    if cfg.fold is not None and cfg.fold < 0:
        raise IvdsegError(f"--fold counts from 0, got {cfg.fold}.")
    from ivdseg.data.preprocess import MAX_CONTEXT_SLICES

    if not 0 <= cfg.context_slices <= MAX_CONTEXT_SLICES:
        raise IvdsegError(f"--context-slices must lie between 0 and {MAX_CONTEXT_SLICES}, got {cfg.context_slices}.")
    if cfg.encoder_weights is not None and not cfg.network.startswith("efficientnet_"):
        raise IvdsegError(f"--network {cfg.network} takes no --encoder-weights; only the networks with a "
                          "keras.applications encoder (efficientnet_b0_unet ... efficientnet_b7_unet) do.")
    if cfg.encoder_weights is not None and not Path(cfg.encoder_weights).is_file():
        raise IvdsegError(f"--encoder-weights {cfg.encoder_weights} is not a file; name a weights file on this machine "
                          "(nothing is downloaded).")


# What a checkpoint's weights depend on: a resumed run must ask for the same, or last.keras is another network;
# and how its batches were drawn, which the card states for the whole run (a state saved before a key existed is
# not checked for it).
RESUME_KEYS = {"size": "--size", "network": "--network", "depth": "--depth", "base_filters": "--base-filters",
               "activation": "--activation", "context_slices": "--context-slices",
               "source_sampling": "--source-sampling",
               "classes": "the dataset's classes", "overlapping": "the dataset's overlapping classes"}


def _resume_state(run_dir: Path, cfg: TrainConfig, classes: list[str], overlapping: bool = False) -> dict:
    """The saved state of the run to resume, checked against the requested configuration.

    Raises:
        IvdsegError: no last.keras, a missing or unreadable state.json, or a saved configuration that differs in a
            :data:`RESUME_KEYS` setting.
    """
    ckpt_dir = run_dir / "checkpoints"
    path = ckpt_dir / "state.json"
    if not (ckpt_dir / "last.keras").is_file():
        raise IvdsegError(f"Nothing to resume in {run_dir}: checkpoints/last.keras is missing.")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IvdsegError(f"Cannot resume {run_dir}: {path} is missing; start afresh with --overwrite.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IvdsegError(f"Cannot resume {run_dir}: {path} is not readable ({exc}); "
                          "start afresh with --overwrite.") from None
    if not (isinstance(state, dict) and isinstance(state.get("config"), dict)
            and isinstance(state.get("epoch"), int) and isinstance(state.get("best"), list)):
        raise IvdsegError(f"Cannot resume {run_dir}: {path} is not a training state of ivdseg train; "
                          "start afresh with --overwrite.")
    requested = {**asdict(cfg), "classes": classes, "overlapping": overlapping}
    saved = state["config"]
    differ = [k for k in RESUME_KEYS if k in saved and saved[k] != requested[k]]
    if differ:
        was = ", ".join(f"{RESUME_KEYS[k]} {saved[k]}" for k in differ)
        now = ", ".join(f"{RESUME_KEYS[k]} {requested[k]}" for k in differ)
        raise IvdsegError(f"Cannot resume {run_dir}: it was trained with {was} but this run asks for {now}; "
                          "repeat the run's settings or start afresh with --overwrite.")
    state["config"] = requested
    return state


# TrainConfig fields whose ``ivdseg train`` option is not --<field-name>; card_extra is the content of --card.
_TRAIN_FLAGS = {"version": "--model-version", "augment": "--no-augment"}


def train_flag(field_name: str) -> str:
    """The ``ivdseg train`` option of a TrainConfig field (e.g. base_filters -> --base-filters)."""
    return _TRAIN_FLAGS.get(field_name, "--" + field_name.replace("_", "-"))


def reproduce_command(cfg: TrainConfig, card_name: str | None = None) -> str:
    """The ``ivdseg train`` command that repeats ``cfg``, for the model card, without any path of this machine.

    Paths can hold patient or user names and mean nothing elsewhere, so the dataset and run folder are the
    placeholders DATASET and RUN, and --init-from keeps only the package's last name.

    Args:
        cfg: the training settings.
        card_name: file name (no folder) of the --card extract, if one was given.

    Returns:
        e.g. ``ivdseg train DATASET -o RUN --network unet2d --size 256 ... --card card.json``.
    """
    parts = ["ivdseg", "train", "DATASET", "-o", "RUN"]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "card_extra" or value is None:
            continue
        flag = train_flag(f.name)
        if f.name == "augment":
            parts += [] if value else [flag]
            continue
        if f.name in ("init_from", "encoder_weights"):
            value = Path(value).name
        parts += [flag, shlex.quote(str(value))]
    if card_name:
        parts += ["--card", shlex.quote(Path(card_name).name)]
    return " ".join(parts)


def _atomic_save(model, path: Path) -> None:
    atomic_write(path, lambda temp: model.save(temp), overwrite=True)


def _make_callbacks(keras, cfg, run_dir, val_x, val_y, val_known, num_classes, reporter, state, steps, stop,
                    overlapping=False):
    from ivdseg.inference.predict import keras_predict, predict_probabilities

    ckpt_dir = run_dir / "checkpoints"

    class ValidationDice(keras.callbacks.Callback):
        """Validation Dice per class each epoch (argmax at the training size); keeps the best N models."""

        def on_train_batch_end(self, batch, logs=None):
            if stop.requested:
                self.model.stop_training = True  # Keras checks it after every batch
                self._partial = True
            elif (batch + 1) % 10 == 0 or batch + 1 == steps:
                reporter.progress(batch + 1, steps, "train")

        def on_epoch_end(self, epoch, logs=None):
            if self._partial:  # stopped inside this epoch: it is neither scored nor kept
                return
            logs = logs if logs is not None else {}
            prob = predict_probabilities(keras_predict(self.model), val_x, cfg.batch_size)
            dice = validation_dice(prob, val_y, val_known, overlapping)
            fg = dice[1:][~np.isnan(dice[1:])]
            val_dice = float(fg.mean()) if len(fg) else 0.0
            logs["val_dice"] = val_dice
            for c in range(1, num_classes):
                logs[f"val_dice_{c}"] = float(np.nan_to_num(dice[c]))
            best = state["best"]
            if len(best) < cfg.keep_best or val_dice > min(b[0] for b in best):
                name = f"best-e{epoch + 1:03d}.keras"
                _atomic_save(self.model, ckpt_dir / name)
                best.append([val_dice, epoch + 1, name])
                best.sort(key=lambda b: -b[0])
                for _, _, old in best[cfg.keep_best:]:
                    (ckpt_dir / old).unlink(missing_ok=True)
                del best[cfg.keep_best:]
            _atomic_save(self.model, ckpt_dir / "last.keras")
            state["epoch"] = epoch + 1
            write_json(ckpt_dir / "state.json", state)
            lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            reporter.emit("epoch", epoch=epoch + 1, epochs=cfg.epochs, loss=float(logs.get("loss", math.nan)),
                          val_dice=val_dice, best_val_dice=best[0][0], learning_rate=lr,
                          seconds=round(time.perf_counter() - self._t0, 1))

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()
            self._partial = False
            if stop.requested:  # asked between epochs
                self.model.stop_training = True
                self._partial = True

    return [
        ValidationDice(),
        keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True),
        keras.callbacks.ReduceLROnPlateau(monitor="val_dice", mode="max", factor=0.5,
                                          patience=max(2, cfg.patience // 3), min_lr=1e-5, verbose=0),
        keras.callbacks.EarlyStopping(monitor="val_dice", mode="max", patience=cfg.patience, verbose=0),
    ]


def _split(info, cfg, patients=None):
    """(train, validation, test case ids) for ``cfg`` or the explicit ``patients``, checked before any work."""
    if cfg.size not in info.sizes:
        raise IvdsegError(f"--size {cfg.size}: {info.root} has no {cfg.size} px copy (it has {info.sizes}); "
                          f"choose one of those or re-export with --sizes including {cfg.size}.")
    if patients is not None:
        train_cases, val_cases = info.cases_of(patients["train"]), info.cases_of(patients["val"])
        test_cases = info.cases_of(patients.get("test", []))
    else:
        train_cases, val_cases = info.split_cases(cfg.fold)
        test_cases = info.test_cases()  # outside every fold: the same test whatever the fold
    if not train_cases:
        raise IvdsegError(f"{info.root / 'splits.json'} leaves no training patient.")
    if not val_cases:
        raise IvdsegError(f"{info.root / 'splits.json'} has no validation patient; export with more patients.")
    return train_cases, val_cases, test_cases


def _load_split(info, cfg, train_cases, val_cases):
    tx, ty = load_inputs(info, train_cases, cfg.size, cfg.context_slices)
    vx, vy = load_inputs(info, val_cases, cfg.size, cfg.context_slices)
    return tx, ty, vx, vy


def _strategy(tf, cfg, reporter):
    gpus = tf.config.list_physical_devices("GPU")
    if cfg.mixed_precision == "on" or (cfg.mixed_precision == "auto" and gpus):
        import keras

        keras.mixed_precision.set_global_policy("mixed_float16")
    if len(gpus) > 1:
        reporter.message(f"Training on {len(gpus)} GPUs (MirroredStrategy).")
        return tf.distribute.MirroredStrategy(), "gpu"
    reporter.message("Training on the GPU." if gpus else "No GPU visible to TensorFlow: training on the CPU.")
    return tf.distribute.get_strategy(), "gpu" if gpus else "cpu"


def train(dataset_dir, run_dir, cfg: TrainConfig, reporter: Reporter | None = None, resume=False,
          overwrite=False, command: str = "", stop: StopRequest | None = None, patients: dict | None = None) -> Path:
    """Trains ``cfg.network`` on a dataset folder and writes the model package ``run_dir/model``.

    Args:
        dataset_dir: folder written by ``ivdseg export``.
        run_dir: run folder: checkpoints/, log.csv, config.json, model/ (the package).
        cfg: the training settings.
        reporter: progress events (JSON lines by default).
        resume: continue from ``run_dir/checkpoints/last.keras``.
        overwrite: start afresh in a run folder that already holds a run.
        command: the command that reproduces the run, recorded in the card; it must hold no path of this
            machine (the CLI passes placeholders, see ``ivdseg.cli``).
        stop: when it is requested (the GUI's Stop, SIGTERM, Ctrl-C), training leaves its loop at the next batch
            and packages the best model so far; the epoch in progress does not count.
        patients: instead of splits.json (cross-validation): {"train": [...], "val": [...], "test": [...]}
            patient pseudonyms, and optionally "split", how the card names it.

    The validation patients make every choice (checkpoint, learning-rate schedule, early stopping,
    post-processing); the test patients (splits.json's, or ``patients["test"]``) are scored once, by the packaged
    model, and reported in the card's "test" entry.

    Returns:
        Path of the model package.

    Raises:
        IvdsegError: a setting out of range (:func:`check_config`), a bad dataset, a size or fold it lacks, a split
            without validation, nothing to resume or a saved configuration that differs, an occupied run folder;
            all before the run folder is created or changed.
    """
    reporter = reporter or Reporter("jsonl")
    stop = stop or StopRequest()
    # Everything a user can get wrong is checked before the run folder is touched.
    check_config(cfg)
    info = ds.open_dataset(dataset_dir)
    train_cases, val_cases, test_cases = _split(info, cfg, patients)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if resume:
        state = _resume_state(run_dir, cfg, info.classes, info.overlapping)
    elif ckpt_dir.exists() and any(ckpt_dir.iterdir()) and not overwrite:
        raise IvdsegError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to restart.")
    else:
        state = {"epoch": 0, "best": [], "config": {**asdict(cfg), "classes": info.classes,
                                                    "overlapping": info.overlapping}}

    import keras
    import tensorflow as tf

    from ivdseg.nn import losses
    from ivdseg.nn import networks
    from ivdseg.models.card import shares_text
    from ivdseg.nn.augment import PRESETS, make_dataset, source_shares
    from ivdseg.models.package import check_keras_file, load_keras_model, load_package, resolve_model

    keras.utils.set_random_seed(cfg.seed)
    strategy, device = _strategy(tf, cfg, reporter)
    with strategy.scope():
        if resume:
            try:  # compiled, with the optimizer's state, so that the run goes on where it stopped
                check_keras_file(ckpt_dir / "last.keras")
                model = keras.saving.load_model(str(ckpt_dir / "last.keras"), safe_mode=True)
            except (OSError, ValueError, TypeError, zipfile.BadZipFile, IvdsegError) as exc:
                raise IvdsegError(f"Cannot resume {run_dir}: checkpoints/last.keras does not load "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                                  "start afresh with --overwrite.") from None
        else:
            extra = {"encoder_weights": cfg.encoder_weights} if cfg.encoder_weights else {}
            try:
                model = networks.build_model(
                    cfg.network, input_size=cfg.size, num_classes=info.num_classes, activation=cfg.activation,
                    depth=cfg.depth, base_filters=cfg.base_filters, dropout=cfg.dropout,
                    channels=2 * cfg.context_slices + 1, output="sigmoid" if info.overlapping else "softmax", **extra)
            except ValueError as exc:
                raise IvdsegError(f"--network {cfg.network} cannot be built with these settings ({exc}).") from None
            if cfg.init_from:
                source, _ = load_package(resolve_model(cfg.init_from))
                try:
                    model.set_weights(source.get_weights())
                except ValueError:
                    raise IvdsegError(f"{cfg.init_from} is not the same network as {cfg.network} "
                                      f"(depth {cfg.depth}, {cfg.base_filters} filters); its weights do not fit.") from None
            model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                          loss=losses.get_loss(cfg.loss, overlapping=info.overlapping),
                          metrics=[losses.DiceMetric(c, multilabel=info.overlapping) for c in range(1, info.num_classes)],
                          jit_compile=False)  # XLA is slower on CPU here and recompiles per shape
    tx, ty, vx, vy = _load_split(info, cfg, train_cases, val_cases)
    reporter.message(f"{len(tx)} training slices from {len(train_cases)} series, "
                     f"{len(vx)} validation slices from {len(val_cases)} series, {cfg.size} px.")
    if not resume and ckpt_dir.exists():  # --overwrite: the old run goes only now that the new one can start
        for f in ckpt_dir.iterdir():
            f.unlink()
        (run_dir / "log.csv").unlink(missing_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**asdict(cfg), "dataset": str(dataset_dir)})

    batch = cfg.batch_size * strategy.num_replicas_in_sync
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(tx) / batch))
    train_known = info.availability(train_cases)
    say_unlabelled(info, train_cases, train_known, ty)
    say_context_gaps(info, cfg.context_slices)
    slice_sources = info.slice_sources(train_cases)
    shares = source_shares(slice_sources, cfg.source_sampling)
    if cfg.source_sampling != "slices":
        reporter.message(f"Training batches draw on the sources {shares_text(shares)} "
                         f"(--source-sampling {cfg.source_sampling}).")
    train_data = make_dataset(tx, ty, info.num_classes, batch, augment=cfg.augment, seed=cfg.seed, repeat=True,
                              cfg=PRESETS[cfg.augmentation], available=train_known, overlapping=info.overlapping,
                              mix=(slice_sources, shares) if cfg.source_sampling != "slices" else None)
    callbacks = _make_callbacks(keras, cfg, run_dir, vx, vy, info.availability(val_cases), info.num_classes,
                                reporter, state, steps, stop, overlapping=info.overlapping)

    t0 = time.perf_counter()
    model.fit(train_data, epochs=cfg.epochs, initial_epoch=state["epoch"], steps_per_epoch=steps,
              callbacks=callbacks, verbose=0)
    stopped = stop.requested
    if not state["best"]:
        raise IvdsegError(f"Training in {run_dir} stopped before the first epoch ended; no model was kept.")
    best_dice, best_epoch, best_name = state["best"][0]
    if stopped:
        reporter.message(f"Training stopped; packaging the best model so far (epoch {best_epoch}, "
                         f"validation Dice {best_dice:.4f}) from {ckpt_dir / best_name}.")
    best = load_keras_model(ckpt_dir / best_name)
    if cfg.weights == "float16":  # scored as it will be stored
        from ivdseg.models.half import round_weights

        round_weights(best)
    card = _card(cfg, info, train_cases, val_cases, best_epoch, state["epoch"], device,
                 time.perf_counter() - t0, command)
    card["training"]["source_shares"] = {name: round(share, 4) for name, share in shares.items()}
    card["training"]["test_patients"] = len({info.cases[c]["patient"] for c in test_cases})
    card["architecture"]["parameters"] = int(best.count_params())
    split = (patients or {}).get("split") or (f"fold {cfg.fold}" if cfg.fold is not None else "splits.json")
    extra = {"training_log.csv": run_dir / "log.csv"} if (run_dir / "log.csv").exists() else {}
    package = score_and_package(best, card, info, val_cases, test_cases, split, run_dir / "model", reporter,
                                cfg.batch_size, extra, weights=cfg.weights)
    reporter.emit("done", package=str(package), best_epoch=best_epoch, epochs_run=state["epoch"],
                  val_dice=card["validation"]["overall"]["mean_dice"],
                  test_dice=card["test"]["overall"]["mean_dice"] if "test" in card else None, stopped=bool(stopped))
    return package


def score_and_package(model, card, info, val_cases, test_cases, split, folder, reporter, batch_size=16,
                      extra=None, weights="float32") -> Path:
    """Chooses the post-processing on the validation cases and scores them, scores the test cases once (after every
    choice), and writes the package (Keras + ONNX, weights stored as ``weights``) with those figures in its card."""
    from ivdseg.eval.evaluate import choose_postprocessing, predict_cases, score_predictions

    predictions = predict_cases(model, card, info, val_cases, batch_size, reporter.progress)
    card["postprocessing"] = choose_postprocessing(predictions, info, card)
    card["validation"] = score_predictions(predictions, info, card)
    card["validation"]["split"] = f"{split}: validation patients (they chose the checkpoint and the post-processing)"
    if test_cases:  # scored once, after every choice is made
        card["test"] = score_predictions(predict_cases(model, card, info, test_cases, batch_size,
                                                       reporter.progress), info, card)
        card["test"]["split"] = f"{split}: test patients (chose nothing)"
    return _save_with_onnx(model, card, folder, extra or {}, reporter, weights)


def _save_with_onnx(model, card, folder, extra, reporter, weights="float32"):
    import tempfile

    from ivdseg.models.onnx_export import export_onnx
    from ivdseg.models.package import save_package

    with tempfile.TemporaryDirectory() as tmp:
        try:
            extra = {**extra, "model.onnx": export_onnx(model, Path(tmp) / "model.onnx")}
            card["backends"] = ["tensorflow", "onnx"]
        except Exception as exc:  # tf2onnx missing or failing: the Keras model is the primary form
            reporter.message(f"The ONNX copy could not be made ({type(exc).__name__}: {exc}); "
                             "the package has the Keras model only.")
        return save_package(model, card, folder, overwrite=True, extra_files=extra, weights=weights)


def _card(cfg, info, train_cases, val_cases, best_epoch, epochs_run, device, seconds, command):
    from ivdseg.models.terminology import class_entries

    meta = json.loads((info.root / "dataset.json").read_text())
    patients = lambda cases: len({info.cases[c]["patient"] for c in cases})  # noqa: E731
    card = {
        "name": cfg.name, "version": cfg.version, "network": cfg.network,
        "architecture": {"activation": cfg.activation, "depth": cfg.depth, "base_filters": cfg.base_filters,
                         "dropout": cfg.dropout},
        "input_size": cfg.size, "channels": 2 * cfg.context_slices + 1, "context_slices": cfg.context_slices,
        "overlapping": info.overlapping,
        # a labelmap holds one class per voxel: where overlapping classes meet, the first of these wins
        **({"label_priority": list(range(1, info.num_classes))} if info.overlapping else {}),
        # the class names of the RLE table it was trained from, which segment --rle-csv writes back
        **({"rle_class_names": meta["table_class_names"], "rle_order": meta.get("table_rle_order", "row-major")}
           if meta.get("table_class_names") else {}),
        "normalization": {"method": "percentile", "percentiles": list(DEFAULT_PERCENTILES), "per": "slice",
                          "range": [0.0, 1.0]},
        "slice_plane": meta.get("slice_plane", "sagittal"),
        "slice_axes": meta.get("slice_axes", "rows superior->inferior, columns anterior->posterior"),
        "preprocessing": {"resize": info.resize},  # inference repeats how the training slices were made square
        "classes": class_entries(info.classes),
        "training": {
            "sources": meta.get("sources", {}), "train_patients": patients(train_cases),
            "val_patients": patients(val_cases), "loss": cfg.loss, "optimizer": "Adam",
            "learning_rate": cfg.learning_rate, "batch_size": cfg.batch_size, "epochs_run": epochs_run,
            "best_epoch": best_epoch, "augmentation": cfg.augmentation if cfg.augment else "none",
            "source_sampling": cfg.source_sampling,
            "seed": cfg.seed, "device": device,
            "seconds": round(seconds, 1), "init_from": Path(cfg.init_from).name if cfg.init_from else None,
            "command": command,
        },
        "licence": "unspecified",
        "citations": [],
    }
    card.update(cfg.card_extra)
    return card
