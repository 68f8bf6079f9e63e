"""Model packages: a folder (or .zip of one) with ``model.keras`` and the card ``model.json``.

The card (DESIGN.md) says what inference must repeat (input size, channels, normalisation, slicing
plane) and what the classes are (value, name, colour, SNOMED CT terminology), with the training data
summary, validation metrics, licence and citations. Models load with Keras ``safe_mode=True``: no
Python lambda in a package is ever executed, and only registered ``ivdseg>`` objects are known.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from ivdseg.errors import IvdsegError

CARD_FORMAT = "ivdseg-model"
CARD_VERSION = 1
REQUIRED_CARD_KEYS = ("format", "format_version", "name", "version", "network", "input_size", "channels",
                      "normalization", "slice_plane", "classes")
# A keypoint package (task "keypoints"): heatmaps of named points, with hint channels for the user's corrections.
REQUIRED_KEYPOINT_CARD_KEYS = ("format", "format_version", "task", "name", "version", "network", "input_shape",
                               "channels", "normalization", "slice_plane", "keypoints", "hint_sigma_px")
TASKS = ("segmentation", "keypoints")


def card_task(card: dict) -> str:
    """"segmentation" (the default of cards that name no task) or "keypoints"."""
    return str(card.get("task", "segmentation"))


def check_card(card: dict, path) -> dict:
    """Raises IvdsegError when the card lacks a key or holds an unknown format version or task."""
    if card_task(card) not in TASKS:
        raise IvdsegError(f"{path} is a model card for the task {card_task(card)!r}; this ivdseg knows {TASKS}.")
    required = REQUIRED_KEYPOINT_CARD_KEYS if card_task(card) == "keypoints" else REQUIRED_CARD_KEYS
    missing = [k for k in required if k not in card]
    if missing:
        raise IvdsegError(f"{path} lacks {', '.join(missing)}; it is not a complete ivdseg model card.")
    if card["format"] != CARD_FORMAT or card["format_version"] != CARD_VERSION:
        raise IvdsegError(f"{path} is a model card of format {card['format']!r} version {card['format_version']!r}; "
                          f"this ivdseg reads {CARD_FORMAT!r} version {CARD_VERSION}.")
    return card


def read_card(package) -> dict:
    """Reads and checks ``model.json`` of a package folder or .zip (without loading Keras)."""
    package = Path(package)
    try:
        if package.suffix.lower() == ".zip":
            with zipfile.ZipFile(package) as zf:
                name = next((n for n in zf.namelist() if n.endswith("model.json")), None)
                if name is None:
                    raise IvdsegError(f"{package} has no model.json card; it is not an ivdseg model package.")
                text = zf.read(name).decode("utf-8")
            return check_card(json.loads(text), package)
        card_path = package / "model.json"
        if not package.is_dir():
            raise IvdsegError(f"{package} is not a model package (a folder or .zip with model.keras and model.json).")
        if not card_path.is_file():
            raise IvdsegError(f"{card_path} is missing; every model package needs its card.")
        return check_card(json.loads(card_path.read_text(encoding="utf-8")), card_path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IvdsegError(f"The card of {package} is not valid JSON ({exc}).") from None
    except zipfile.BadZipFile:
        raise IvdsegError(f"{package} is not a valid zip file.") from None


def extract_package(package: Path, into: Path) -> Path:
    """Extracts a package .zip into the folder ``into``; returns the folder that holds model.json.

    Raises:
        IvdsegError: a member that would land outside ``into``, a bad zip, or no card.
    """
    root = Path(into).resolve()
    try:
        with zipfile.ZipFile(package) as zf:
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise IvdsegError(f"{package} holds a path outside the package ({member}); refused.")
            zf.extractall(root)
    except zipfile.BadZipFile:
        raise IvdsegError(f"{package} is not a valid zip file.") from None
    card = next(root.rglob("model.json"), None)
    if card is None:
        raise IvdsegError(f"{package} has no model.json card.")
    return card.parent


@contextlib.contextmanager
def package_folder(package: Path):
    """The package's folder; a .zip is extracted into a temporary folder removed on exit."""
    if package.suffix.lower() != ".zip":
        yield package
        return
    with tempfile.TemporaryDirectory(prefix="ivdseg-model-") as tmp:
        yield extract_package(package, Path(tmp))


# Keras classes that load other code or saved graphs: refused whatever Keras's own safe mode does with them
# (CVE-2026-1462 reached code through TFSMLayer with safe_mode=True).
REFUSED_KERAS_CLASSES = {"TFSMLayer", "Lambda"}
MAX_CONFIG_BYTES = 64 * 2**20


def _objects(node, where="config"):
    """Every serialized object (a dict with "class_name") in a Keras config, with where it sits."""
    if isinstance(node, dict):
        if "class_name" in node:
            yield node, where
        for key, value in node.items():
            yield from _objects(value, f"{where}.{key}")
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from _objects(value, f"{where}[{n}]")


def check_keras_file(path) -> None:
    """Refuses a ``.keras`` file whose config names anything but Keras's own classes and ivdseg's registered ones.

    Read before Keras parses the file, as a second wall behind ``safe_mode``: model packages come from other people,
    and every safe_mode bypass so far went through a class or module that no ivdseg network uses.

    Raises:
        IvdsegError: not a Keras archive, a config that is not JSON, or an object outside the allowed set.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise IvdsegError(f"{path} has a {info.file_size} byte config; refused as no model of ivdseg's.")
            config = json.loads(zf.read(info).decode("utf-8"))
    except FileNotFoundError:
        raise IvdsegError(f"{path} is missing.") from None
    except (KeyError, zipfile.BadZipFile, UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise IvdsegError(f"{path} is damaged or not a Keras model file ({exc}).") from None
    for obj, where in _objects(config):
        module, name = obj.get("module"), str(obj.get("class_name"))
        registered = str(obj.get("registered_name") or "")
        if module is None and name == "__keras_tensor__":
            continue
        if module == "builtins" and name == "function" and str(obj.get("config", "")).startswith("ivdseg>"):
            continue  # an ivdseg function registered with Keras (e.g. the mish activation)
        if isinstance(module, str) and module.startswith("ivdseg.") and registered.startswith("ivdseg>"):
            continue
        if isinstance(module, str) and (module == "keras" or module.startswith("keras.")) \
                and name not in REFUSED_KERAS_CLASSES and registered in ("", name):
            continue
        raise IvdsegError(f"{path} names {module}.{name} at {where}, which is neither a Keras class nor one of "
                          "ivdseg's; the model is refused without being loaded.")


def load_keras_model(path):
    """Loads a ``.keras`` file with ``safe_mode=True`` and the ivdseg custom objects registered, after
    :func:`check_keras_file`."""
    import keras

    from ivdseg.nn import losses, networks  # noqa: F401  (registers ivdseg> objects)

    check_keras_file(path)
    try:
        return keras.saving.load_model(str(path), safe_mode=True, compile=False)
    except FileNotFoundError:
        raise IvdsegError(f"{path} is missing.") from None
    except (TypeError, ValueError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "lambda" in text.lower() or "unsafe" in text.lower():
            raise IvdsegError(f"{path} contains Python code (a Lambda layer), refused by safe mode.") from None
        if "not find" in text.lower() or "unknown" in text.lower() or "register" in text.lower():
            raise IvdsegError(f"{path} uses a layer or function that ivdseg does not know ({text}).") from None
        raise IvdsegError(f"{path} is not a loadable Keras model ({text}).") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise IvdsegError(f"{path} is damaged or not a Keras model file ({exc}).") from None


def load_package(package):
    """Loads a model package.

    Args:
        package: a package folder or a .zip of one.

    Returns:
        (keras.Model, card dict). The card's ``input_size``/``channels`` are checked against the model.

    Raises:
        IvdsegError: missing or incomplete card, a model that does not load safely, or that does not fit its card.
    """
    package = Path(package)
    card = read_card(package)
    with package_folder(package) as folder:
        model = load_keras_model(folder / "model.keras")
    if card_task(card) == "keypoints":
        k = len(card["keypoints"])
        expected = (*card["input_shape"], card["channels"] + k)
        if tuple(model.input_shape[1:]) != expected or model.output_shape[-1] != k:
            raise IvdsegError(f"{package}: the card says input {expected} and {k} heatmaps but the network takes "
                              f"{tuple(model.input_shape[1:])} and gives {model.output_shape[-1]}.")
        return model, card
    expected = (card["input_size"], card["input_size"], card["channels"])
    got = tuple(model.input_shape[1:])
    if got != expected:
        raise IvdsegError(f"{package}: the card says input {expected} but the network takes {got}.")
    n_out = model.output_shape[-1]
    if n_out != len(card["classes"]) + 1:
        raise IvdsegError(f"{package}: the card names {len(card['classes'])} classes + background "
                          f"but the network outputs {n_out} channels.")
    return model, card


def save_package(model, card: dict, folder, overwrite=False, extra_files: dict | None = None,
                 weights: str = "float32") -> Path:
    """Writes a package folder atomically (staging folder, then rename).

    Args:
        model: the keras.Model.
        card: the card; format keys are filled in.
        folder: destination package folder.
        overwrite: replace an existing package.
        extra_files: {name: source path} copied into the package (e.g. model.onnx, training log).
        weights: "float16" stores the Keras and ONNX weights at half size (:mod:`ivdseg.models.half`; round the
            model's weights with ``half.round_weights`` first so that what was scored is what is stored).
    """
    from ivdseg.io.atomic import atomic_folder
    from ivdseg.models import half
    from ivdseg.models.card import render

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if weights not in half.WEIGHT_DTYPES:
        raise IvdsegError(f"Weights are stored as one of {', '.join(half.WEIGHT_DTYPES)}, not {weights!r}.")
    card = {"format": CARD_FORMAT, "format_version": CARD_VERSION, **card}
    if weights == "float16":
        card["weights_storage"] = "float16"
    check_card(card, folder / "model.json")
    with atomic_folder(folder, overwrite=overwrite) as staging:
        model.save(staging / "model.keras")
        for name, src in (extra_files or {}).items():
            shutil.copy2(src, staging / name)
        if weights == "float16":
            half.halve_keras_file(staging / "model.keras")
            if (staging / "model.onnx").exists():
                half.halve_onnx_file(staging / "model.onnx")
                half.check_half_onnx(staging / "model.onnx", model)
        (staging / "model.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        (staging / "MODEL_CARD.md").write_text(render(card), encoding="utf-8")
    return folder


def update_card(folder, entries: dict) -> dict:
    """Adds or replaces top-level ``entries`` of a package folder's card (e.g. a measured inference time) and
    renders MODEL_CARD.md again; each file is replaced atomically, the weights are untouched."""
    from ivdseg.io.atomic import atomic_write, write_json
    from ivdseg.models.card import render

    folder = Path(folder)
    if not folder.is_dir():
        raise IvdsegError(f"{folder} is not a model package folder; a card inside a .zip cannot be updated.")
    card = {**read_card(folder), **entries}
    write_json(folder / "model.json", card)
    atomic_write(folder / "MODEL_CARD.md", lambda temp: Path(temp).write_text(render(card), encoding="utf-8"),
                 overwrite=True)
    return card


def bundled_models_dirs() -> list[Path]:
    """Folders of bundled packages: IVDSEG_MODELS_DIR if set, else Resources/models of the checkout
    and of the installed Slicer module (``<module dir>/Resources/models``)."""
    env = os.environ.get("IVDSEG_MODELS_DIR")
    if env:
        return [Path(env)]
    module_dir = Path(__file__).resolve().parents[2]  # IVDSegmentation/, which holds ivdseg/
    candidates = [module_dir.parent / "Resources" / "models", module_dir / "Resources" / "models"]
    return [c for c in candidates if c.is_dir()] or candidates[:1]


DEFAULT_MODEL = "ivd-disc-2d"


def resolve_model(name_or_path=None) -> Path:
    """A package path from a path, or from the name of a bundled package (default: the bundled disc model)."""
    name_or_path = name_or_path or DEFAULT_MODEL
    p = Path(name_or_path)
    if p.exists():
        return p
    for folder in bundled_models_dirs():
        candidate = folder / str(name_or_path)
        if candidate.exists():
            return candidate
    known = sorted(d.name for f in bundled_models_dirs() for d in f.glob("*") if (d / "model.json").exists())
    raise IvdsegError(f"No model package at {name_or_path}; give a package folder or one of the bundled models {known}.")
