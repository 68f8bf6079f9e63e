"""Python packages of inference and training: checked on demand, installed only after the user agrees.

Only what inference needs (ONNX Runtime, OpenCV, NRRD/NIfTI readers) is installed for the Segment panel;
TensorFlow is asked for only when the user trains. Slicer's own numpy is pinned by a constraints file, so no
install replaces it. Requirements always travel as a list (a single string would be split POSIX-style, which
eats the backslashes of Windows paths); Slicer 5.12's ``slicer.packaging.pip_install`` takes the constraints
file itself, older versions get ``-c FILE`` in the list.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

from .worker import isForeignPython, processOptions, workerEnvironment

# import name -> pip requirement
INFERENCE = {
    "onnxruntime": "onnxruntime>=1.18",
    "cv2": "opencv-python-headless>=4.9",
    "nrrd": "pynrrd>=1.0",
    "nibabel": "nibabel>=5.2",
    "pydicom": "pydicom>=3.0",
    "scipy": "scipy>=1.11",
    "highdicom": "highdicom>=0.22",
}
# No Keras with a known safe_mode bypass may load a model package: CVE-2025-8747 (fixed in 3.11.0), CVE-2026-1462
# and GHSA-hqp4-2352-xf5r (fixed in 3.14.0); the same floor as pyproject.toml.
TRAINING = {"tensorflow": "tensorflow>=2.20", "keras": "keras>=3.14.0", "tf2onnx": "tf2onnx>=1.16",
            "onnx": "onnx>=1.16"}
PROBE_TIMEOUT_S = 60


def probeCommand(python, modules) -> list:
    """The command that asks ``python`` which of ``modules`` it cannot import (a JSON list on its last line)."""
    code = ("import importlib.util, json; print(json.dumps([m for m in %r "
            "if importlib.util.find_spec(m) is None]))" % list(modules))
    return [python, "-c", code]


def _missing(table, python=None) -> list:
    if isForeignPython(python):
        # Another environment runs the worker: ask it, in the environment the worker will have, with no console.
        try:
            out = subprocess.run(probeCommand(python, table), capture_output=True, text=True, check=True,
                                 timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL, env=workerEnvironment(python),
                                 **processOptions()).stdout
            return [table[m] for m in json.loads(out.strip().splitlines()[-1])]
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            raise ValueError(f"The worker Python {python} does not run; check the path in Advanced.") from None
    return [req for module, req in table.items() if importlib.util.find_spec(module) is None]


def missingInferencePackages(python=None) -> list:
    """pip requirements of inference that the worker's Python lacks (empty when all are there)."""
    return _missing(INFERENCE, python)


def missingTrainingPackages(python=None) -> list:
    """pip requirements of training that the worker's Python lacks."""
    return _missing(TRAINING, python)


def pipArguments(requirements, constraintsFile) -> list:
    """The argument list for ``slicer.util.pip_install``: requirements, then ``-c`` and the constraints file."""
    return [*requirements, "-c", str(constraintsFile)]


def _install(requirements) -> bool:
    import numpy
    import slicer

    if not requirements:
        return False
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write(f"numpy=={numpy.__version__}\n")  # never replace Slicer's numpy
        constraints = fh.name
    try:
        packaging = getattr(slicer, "packaging", None)
        if packaging is not None and hasattr(packaging, "pip_install"):  # Slicer 5.12 and later
            packaging.pip_install(list(requirements), constraints=constraints)
        else:
            slicer.util.pip_install(pipArguments(requirements, constraints))
    finally:
        os.unlink(constraints)
    importlib.invalidate_caches()
    # Still not importable, or imported before in this session (an older version is in memory): restart.
    modules = [m for m, requirement in {**INFERENCE, **TRAINING}.items() if requirement in requirements]
    return any(importlib.util.find_spec(m) is None or m in sys.modules for m in modules)


def installInferencePackages() -> bool:
    """Installs the missing inference packages into Slicer's Python; True when Slicer must restart to use them."""
    return _install(missingInferencePackages())


def installTrainingPackages() -> bool:
    """Installs the missing training packages into Slicer's Python; True when Slicer must restart to use them."""
    return _install(missingTrainingPackages())
