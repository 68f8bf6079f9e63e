"""Layering rules of DESIGN.md, checked on the source: the core never imports Slicer, Qt, CTK or VTK,
and the light modules load without TensorFlow or Keras."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

CORE = ROOT / "IVDSegmentation" / "ivdseg"
FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt", "mrml"}
# Modules that import Keras when loaded (they define Keras layers, losses and metrics); every other module of the
# core must load without TensorFlow or Keras, so that export, inference plumbing and the Slicer side stay light.
KERAS_MODULES = {"ivdseg.nn.networks", "ivdseg.nn.losses"}


def _core_modules():
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module


def test_core_never_imports_slicer_qt_ctk_vtk():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 10
    bad = [(f.name, name) for f in files for name in _imports(f) if name.split(".")[0] in FORBIDDEN]
    assert bad == []


def test_light_modules_import_without_tensorflow_or_keras():
    light = [m for m in _core_modules() if m not in KERAS_MODULES]
    assert len(light) > 20 and "ivdseg.io.volumes" in light
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'IVDSegmentation')!r})\n"
        f"for m in {light!r}: __import__(m)\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
