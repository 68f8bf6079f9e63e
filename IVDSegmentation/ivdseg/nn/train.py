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
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ivdseg.data import dataset as ds
from ivdseg.errors import IvdsegError
from ivdseg.io.atomic import atomic_write, write_json
from ivdseg.data.preprocess import DEFAULT_PERCENTILES, normalize_slices
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
    mixed_precision: str = "auto"  # auto: on when a GPU is used
    init_from: str | None = None  # a model package whose weights start the training (fine-tuning)
    name: str = "ivdseg-model"
    version: str = "1.0.0"
    card_extra: dict = field(default_factory=dict)  # licence, citations, description for the card


def _atomic_save(model, path: Path) -> None:
    atomic_write(path, lambda temp: model.save(temp), overwrite=True)


def _make_callbacks(keras, cfg, run_dir, val_x, val_y, num_classes, reporter, state, steps, stop):
    from ivdseg.eval.metrics import dice_per_class
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
            dice = dice_per_class(val_y, np.argmax(prob, -1), num_classes)
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


def _load_split(info, cfg):
    train_cases, val_cases = info.split_cases(cfg.fold)
    if not train_cases:
        raise IvdsegError(f"{info.root / 'splits.json'} leaves no training patient.")
    if not val_cases:
        raise IvdsegError(f"{info.root / 'splits.json'} has no validation patient; export with more patients.")
    tx, ty = ds.load_resized(info, train_cases, cfg.size)
    vx, vy = ds.load_resized(info, val_cases, cfg.size)
    return train_cases, val_cases, normalize_slices(tx), ty, normalize_slices(vx)[..., None], vy


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
          overwrite=False, command: str = "", stop: StopRequest | None = None) -> Path:
    """Trains ``cfg.network`` on a dataset folder and writes the model package ``run_dir/model``.

    Args:
        dataset_dir: folder written by ``ivdseg export``.
        run_dir: run folder: checkpoints/, log.csv, config.json, model/ (the package).
        cfg: the training settings.
        reporter: progress events (JSON lines by default).
        resume: continue from ``run_dir/checkpoints/last.keras``.
        overwrite: start afresh in a run folder that already holds a run.
        command: the command line, recorded in the card.
        stop: when it is requested (the GUI's Stop, SIGTERM, Ctrl-C), training leaves its loop at the next batch
            and packages the best model so far; the epoch in progress does not count.

    Returns:
        Path of the model package.

    Raises:
        IvdsegError: bad dataset, split without validation, nothing to resume, an occupied run folder.
    """
    reporter = reporter or Reporter("jsonl")
    stop = stop or StopRequest()
    info = ds.open_dataset(dataset_dir)
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if resume and not (ckpt_dir / "last.keras").is_file():
        raise IvdsegError(f"Nothing to resume in {run_dir}: checkpoints/last.keras is missing.")
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()) and not overwrite:
        raise IvdsegError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to restart.")
    if not resume and ckpt_dir.exists():
        for f in ckpt_dir.iterdir():
            f.unlink()
        (run_dir / "log.csv").unlink(missing_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    import keras
    import tensorflow as tf

    from ivdseg.nn import losses
    from ivdseg.nn import networks
    from ivdseg.nn.augment import make_dataset
    from ivdseg.models.package import load_keras_model, load_package

    keras.utils.set_random_seed(cfg.seed)
    train_cases, val_cases, tx, ty, vx, vy = _load_split(info, cfg)
    reporter.message(f"{len(tx)} training slices from {len(train_cases)} series, "
                     f"{len(vx)} validation slices from {len(val_cases)} series, {cfg.size} px.")
    strategy, device = _strategy(tf, cfg, reporter)
    state = {"epoch": 0, "best": [], "config": asdict(cfg)}
    with strategy.scope():
        if resume:
            state = json.loads((ckpt_dir / "state.json").read_text())
            model = keras.saving.load_model(str(ckpt_dir / "last.keras"), safe_mode=True)
        else:
            model = networks.build_model(
                cfg.network, input_size=cfg.size, num_classes=info.num_classes, activation=cfg.activation,
                depth=cfg.depth, base_filters=cfg.base_filters, dropout=cfg.dropout)
            if cfg.init_from:
                source, _ = load_package(cfg.init_from)
                try:
                    model.set_weights(source.get_weights())
                except ValueError:
                    raise IvdsegError(f"{cfg.init_from} is not the same network as {cfg.network} "
                                      f"(depth {cfg.depth}, {cfg.base_filters} filters); its weights do not fit.") from None
            model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss=losses.get_loss(cfg.loss),
                          metrics=[losses.DiceMetric(c) for c in range(1, info.num_classes)],
                          jit_compile=False)  # XLA is slower on CPU here and recompiles per shape
    write_json(run_dir / "config.json", {**asdict(cfg), "dataset": str(dataset_dir)})

    batch = cfg.batch_size * strategy.num_replicas_in_sync
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(tx) / batch))
    train_data = make_dataset(tx, ty, info.num_classes, batch, augment=cfg.augment, seed=cfg.seed, repeat=True)
    callbacks = _make_callbacks(keras, cfg, run_dir, vx, vy, info.num_classes, reporter, state, steps, stop)

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
    card = _card(cfg, info, train_cases, val_cases, best_epoch, state["epoch"], device,
                 time.perf_counter() - t0, command)
    from ivdseg.eval.evaluate import choose_postprocessing, predict_cases, score_predictions

    predictions = predict_cases(best, card, info, val_cases, cfg.batch_size, reporter.progress)
    card["postprocessing"] = choose_postprocessing(predictions, info, card)
    card["validation"] = score_predictions(predictions, info, card)
    card["validation"]["split"] = f"fold {cfg.fold}" if cfg.fold is not None else "splits.json train/val"
    extra = {"training_log.csv": run_dir / "log.csv"} if (run_dir / "log.csv").exists() else {}
    package = _save_with_onnx(best, card, run_dir / "model", extra, reporter)
    reporter.emit("done", package=str(package), best_epoch=best_epoch, epochs_run=state["epoch"],
                  val_dice=card["validation"]["overall"]["mean_dice"], stopped=bool(stopped))
    return package


def _save_with_onnx(model, card, folder, extra, reporter):
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
        return save_package(model, card, folder, overwrite=True, extra_files=extra)


def _card(cfg, info, train_cases, val_cases, best_epoch, epochs_run, device, seconds, command):
    from ivdseg.models.package import class_entries

    meta = json.loads((info.root / "dataset.json").read_text())
    patients = lambda cases: len({info.cases[c]["patient"] for c in cases})  # noqa: E731
    card = {
        "name": cfg.name, "version": cfg.version, "network": cfg.network,
        "architecture": {"activation": cfg.activation, "depth": cfg.depth, "base_filters": cfg.base_filters,
                         "dropout": cfg.dropout},
        "input_size": cfg.size, "channels": 1,
        "normalization": {"method": "percentile", "percentiles": list(DEFAULT_PERCENTILES), "per": "slice",
                          "range": [0.0, 1.0]},
        "slice_plane": "sagittal",
        "slice_axes": "rows superior->inferior, columns anterior->posterior",
        "classes": class_entries(info.classes),
        "training": {
            "sources": meta.get("sources", {}), "train_patients": patients(train_cases),
            "val_patients": patients(val_cases), "loss": cfg.loss, "optimizer": "Adam",
            "learning_rate": cfg.learning_rate, "batch_size": cfg.batch_size, "epochs_run": epochs_run,
            "best_epoch": best_epoch, "augmentation": cfg.augment, "seed": cfg.seed, "device": device,
            "seconds": round(seconds, 1), "init_from": Path(cfg.init_from).name if cfg.init_from else None,
            "command": command,
        },
        "licence": "unspecified",
        "citations": [],
    }
    card.update(cfg.card_extra)
    return card
