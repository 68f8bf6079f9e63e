"""Inference backends behind one interface: ``predict(batch (B, S, S, 1)) -> probabilities (B, S, S, C)``.

- "tensorflow": the Keras model (GPU on Linux when TensorFlow sees one).
- "onnx": the package's ONNX copy in ONNX Runtime (light install; CUDA/DirectML providers for GPUs).
- "auto": TensorFlow when it sees a GPU, else ONNX Runtime when the package has an ONNX copy
  (faster on CPUs, and the only choice where TensorFlow is absent), else TensorFlow.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ivdseg.errors import IvdsegError
from ivdseg.models.package import read_card


@dataclass
class Backend:
    predict: Callable[[np.ndarray], np.ndarray]
    card: dict
    name: str  # "tensorflow" or "onnx"
    device: str  # "gpu" or "cpu"
    unpacked: object = None  # the temporary folder of a .zip package, kept as long as the backend


def _has(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _tf_gpus():
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def _tensorflow(package: Path, card: dict, device: str) -> Backend:
    if not _has("tensorflow"):
        raise IvdsegError("TensorFlow is not installed; install it (pip install tensorflow-cpu) or use --backend onnx.")
    import tensorflow as tf

    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    gpus = _tf_gpus() if device != "cpu" else []
    if device == "gpu" and not gpus:
        raise IvdsegError("--device gpu was asked for but TensorFlow sees no GPU; use --device auto or cpu.")
    from ivdseg.models.package import load_package

    model, card = load_package(package)

    def predict(batch):
        return _halving_on_oom(lambda b: np.asarray(model(b, training=False)), batch, tf.errors.ResourceExhaustedError)

    return Backend(predict, card, "tensorflow", "gpu" if gpus else "cpu")


def _onnx(package: Path, card: dict, device: str) -> Backend:
    if not _has("onnxruntime"):
        raise IvdsegError("ONNX Runtime is not installed; install it (pip install onnxruntime).")
    onnx_path = _onnx_file(package)
    if onnx_path is None:
        raise IvdsegError(f"{package} has no model.onnx; use --backend tensorflow or re-package the model.")
    import onnxruntime as ort

    available = ort.get_available_providers()
    gpu_providers = [p for p in ("CUDAExecutionProvider", "DmlExecutionProvider") if p in available]
    if device == "gpu" and not gpu_providers:
        raise IvdsegError("--device gpu was asked for but ONNX Runtime has no GPU provider "
                          "(install onnxruntime-gpu or onnxruntime-directml); use --device cpu.")
    providers = (gpu_providers if device != "cpu" else []) + ["CPUExecutionProvider"]
    options = ort.SessionOptions()
    threads = int(os.environ.get("IVDSEG_THREADS", "0") or 0)
    if threads > 0:  # a batch worker pinned to a share of the cores uses that many threads, not every core
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise IvdsegError(f"{onnx_path} does not load in ONNX Runtime ({exc}).") from None
    name = session.get_inputs()[0].name
    used = session.get_providers()[0]

    def predict(batch):
        return session.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0]

    return Backend(predict, card, "onnx", "cpu" if used == "CPUExecutionProvider" else "gpu")


def _onnx_file(package: Path) -> Path | None:
    p = package / "model.onnx"
    return p if p.is_file() else None


def _halving_on_oom(fn, batch, oom_error):
    """Runs fn on the batch; on out-of-memory, halves the batch and retries down to one slice."""
    try:
        return fn(batch)
    except oom_error:
        if len(batch) <= 1:
            raise IvdsegError("Out of GPU memory even for one slice; use --device cpu.") from None
        half = len(batch) // 2
        return np.concatenate([_halving_on_oom(fn, batch[:half], oom_error),
                               _halving_on_oom(fn, batch[half:], oom_error)])


def load_backend(package, backend="auto", device="auto") -> Backend:
    """Opens a model package for inference.

    Args:
        package: package folder (or .zip).
        backend: "auto", "onnx" or "tensorflow".
        device: "auto", "gpu" or "cpu".

    Raises:
        IvdsegError: missing dependency or file, a model that does not load, no GPU where one is demanded.
    """
    if backend not in ("auto", "onnx", "tensorflow"):
        raise IvdsegError(f"--backend must be auto, onnx or tensorflow, not {backend!r}.")
    if device not in ("auto", "gpu", "cpu"):
        raise IvdsegError(f"--device must be auto, gpu or cpu, not {device!r}.")
    package = Path(package)
    unpacked = None
    if package.suffix.lower() == ".zip":
        import tempfile

        from ivdseg.models.package import extract_package

        unpacked = tempfile.TemporaryDirectory(prefix="ivdseg-model-")  # removed with the backend
        package = extract_package(package, Path(unpacked.name))
    card = read_card(package)
    if backend == "auto":
        # Importing TensorFlow costs seconds: only ask it about GPUs where an NVIDIA driver is present.
        tf_gpu = device != "cpu" and _nvidia_driver() and _has("tensorflow") and bool(_tf_gpus())
        if tf_gpu or _onnx_file(package) is None or not _has("onnxruntime"):
            backend = "tensorflow"
        else:
            backend = "onnx"
    result = _onnx(package, card, device) if backend == "onnx" else _tensorflow(package, card, device)
    result.unpacked = unpacked
    return result


_OPEN: dict[tuple, Backend] = {}


def cached_backend(package, backend="auto", device="auto") -> Backend:
    """:func:`load_backend`, opened once per process and kept: a batch worker segments every series of its share
    with the model it loaded for the first (and an anchor model likewise)."""
    package = Path(package).resolve()
    files = [package] if package.is_file() else [package / n for n in ("model.json", "model.onnx", "model.keras")]
    stamps = tuple(f.stat().st_mtime_ns for f in files if f.exists())  # a package rewritten in place is reopened
    key = (str(package), stamps, backend, device)
    if key not in _OPEN:
        _OPEN[key] = load_backend(package, backend, device)
    return _OPEN[key]


def _nvidia_driver() -> bool:
    """False only where there is certainly no NVIDIA driver (Linux without /proc/driver/nvidia)."""
    import os
    import sys

    return not sys.platform.startswith("linux") or os.path.exists("/proc/driver/nvidia/version")
