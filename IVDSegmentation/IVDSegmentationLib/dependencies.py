"""Inference dependencies in Slicer's Python: checked on demand, installed only after the user agrees.

Only what inference needs (ONNX Runtime, OpenCV, NRRD/NIfTI readers) is installed; TensorFlow is asked
for only when the user trains. Slicer's own numpy is pinned so no install replaces it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

# import name -> pip requirement
INFERENCE = {
    "onnxruntime": "onnxruntime>=1.18",
    "cv2": "opencv-python-headless>=4.9",
    "nrrd": "pynrrd>=1.0",
    "nibabel": "nibabel>=5.2",
    "pydicom": "pydicom>=3.0",
    "scipy": "scipy>=1.11",
}
TRAINING = {"tensorflow": "tensorflow>=2.20", "keras": "keras>=3.10", "tf2onnx": "tf2onnx>=1.16",
            "onnx": "onnx>=1.16"}


def _missing(table, python=None) -> list:
    if python and os.path.realpath(python) != os.path.realpath(sys.executable):
        # another environment runs the worker: ask it
        code = ("import importlib.util, json; print(json.dumps([m for m in %r "
                "if importlib.util.find_spec(m) is None]))" % list(table))
        try:
            out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
            return [table[m] for m in json.loads(out.strip().splitlines()[-1])]
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            raise ValueError(f"The worker Python {python} does not run; check the path in Advanced.") from None
    return [req for module, req in table.items() if importlib.util.find_spec(module) is None]


def missingInferencePackages(python=None) -> list:
    """pip requirements of inference that the worker's Python lacks (empty when all are there)."""
    return _missing(INFERENCE, python)


def missingTrainingPackages() -> list:
    return _missing(TRAINING)


def _install(requirements) -> bool:
    import numpy
    import slicer

    if not requirements:
        return False
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write(f"numpy=={numpy.__version__}\n")  # never replace Slicer's numpy
        constraints = fh.name
    try:
        slicer.util.pip_install(" ".join([*requirements, "-c", constraints]))
    finally:
        os.unlink(constraints)
    importlib.invalidate_caches()
    # A package that was imported before in this session (an older version) needs a restart.
    return any(importlib.util.find_spec(m) is None for m in INFERENCE)


def installInferencePackages() -> bool:
    """Installs the missing inference packages; returns True when Slicer must restart to use them."""
    return _install(missingInferencePackages())


def installTrainingPackages() -> bool:
    return _install(missingTrainingPackages())
