"""ONNX copy of a Keras network, for the light inference backend (ONNX Runtime, no TensorFlow).

Keras 3 exports through tf2onnx; the copy is checked against Keras on a random batch before it is
accepted, so a package never carries an ONNX file that disagrees with its Keras model.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

MAX_ABS_DIFF = 1e-4


def export_onnx(model, path, check=True) -> Path:
    """Writes ``model`` as ONNX to ``path`` and checks ONNX Runtime agrees with Keras.

    Args:
        model: keras.Model with input (B, S, S, C).
        path: destination .onnx file.
        check: compare outputs on a random batch of 2.

    Returns:
        The path written.

    Raises:
        RuntimeError: when the outputs differ by more than MAX_ABS_DIFF.
    """
    path = Path(path)
    shape = model.input_shape[1:]
    x = np.random.default_rng(0).random((2, *shape), dtype=np.float32)
    reference = np.asarray(model(x, training=False))  # a model must have been called before export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.export(str(path), format="onnx", verbose=False)
    if check:
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
        diff = float(np.abs(got - reference).max())
        if diff > MAX_ABS_DIFF:
            path.unlink(missing_ok=True)
            raise RuntimeError(f"the ONNX copy differs from Keras by {diff:.2e}")
    return path
