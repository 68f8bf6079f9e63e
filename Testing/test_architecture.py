"""Layering rules of DESIGN.md, checked on the source: the core never imports Slicer, Qt, CTK or VTK,
and the light modules load without TensorFlow or Keras."""

from __future__ import annotations

import ast
import subprocess
import sys

from conftest import ROOT

CORE = ROOT / "IVDSegmentation" / "ivdseg"
FORBIDDEN = {"slicer", "qt", "ctk", "vtk", "vtkmodules", "PythonQt", "mrml"}
# modules that dataset export, inference plumbing and the Slicer side import without TensorFlow
LIGHT = ["ivdseg.cli", "ivdseg.dataset", "ivdseg.export", "ivdseg.volume", "ivdseg.dicom", "ivdseg.metrics",
         "ivdseg.preprocess", "ivdseg.package", "ivdseg.progress", "ivdseg.infer", "ivdseg.evaluate"]


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
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT / 'IVDSegmentation')!r})\n"
        f"for m in {LIGHT!r}: __import__(m)\n"
        "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
