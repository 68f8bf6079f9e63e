"""Shared test set-up: where the real sample data is, and how a missing set is reported.

A missing data set skips the test with its reason, except under CI (CI=true), where it fails:
a broken data path must never pass silently.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "IVDSegmentation"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def sample_data_dir() -> Path:
    return Path(os.environ.get("IVDSEG_SAMPLE_DATA", ROOT.parent / "shared" / "data"))


def require_data(relpath: str) -> Path:
    """Path of a sample data set; skips (or fails under CI=true) when it is missing."""
    path = sample_data_dir() / relpath
    if not path.exists():
        reason = f"sample data {path} is missing (set IVDSEG_SAMPLE_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def exported_bytes(root: Path) -> bytes:
    """Every byte of every file under root, lower-cased, npz members decompressed: compressed bytes can
    neither hide a name nor, by chance, fake a short one."""
    import zipfile

    chunks = []
    for f in sorted(root.rglob("*")):
        if not f.is_file():
            continue
        chunks.append(f.name.encode())
        if f.suffix == ".npz":
            with zipfile.ZipFile(f) as zf:
                chunks += [m.encode() for m in zf.namelist()] + [zf.read(m) for m in zf.namelist()]
        else:
            chunks.append(f.read_bytes())
    return b"\n".join(chunks).lower()


def require_slicer_core():
    """The slicer-core package (real MRML nodes, no Qt); skips when it is missing, or fails under CI=true, where
    a missing test dependency must never pass as a skip."""
    try:
        import slicer
    except ImportError:
        slicer = None
    if slicer is None or not hasattr(slicer, "vtkMRMLScene"):
        reason = "slicer-core is not installed here (pip install slicer-core; never 'pip install slicer')"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return slicer


@pytest.fixture
def data_dir():
    return require_data(".")


class _ModuleLogic:
    def __init__(self, logic):
        self._logic = logic

    def logic(self):
        return self._logic


@pytest.fixture
def mrml():
    """A headless Slicer scene with the logics the module uses (slicer-core; no Qt, no application).

    Sets ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` as the application would, and
    restores the previous values afterwards.
    """
    slicer = require_slicer_core()
    sys.path.insert(0, str(ROOT / "IVDSegmentation"))
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app_logic)
    colors.SetMRMLScene(scene)
    app_logic.SetModuleLogic("Colors", colors)
    logics = {}
    for name, cls in [("volumes", slicer.vtkSlicerVolumesLogic), ("segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("subjecthierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic)]:
        logic = cls()
        logic.SetMRMLApplicationLogic(app_logic)
        logic.SetMRMLScene(scene)
        app_logic.SetModuleLogic(name.capitalize(), logic)
        logics[name] = _ModuleLogic(logic)
    saved = {k: getattr(slicer, k, None) for k in ("mrmlScene", "modules", "app")}
    slicer.mrmlScene = scene
    slicer.modules = type("Modules", (), logics)()
    try:
        yield scene
    finally:
        for k, v in saved.items():
            if v is None:
                if hasattr(slicer, k):
                    delattr(slicer, k)
            else:
                setattr(slicer, k, v)
        scene.Clear(1)


@pytest.fixture(scope="module")
def eager_training():
    """Runs TensorFlow functions eagerly for one module's tests (opt in with
    ``pytestmark = pytest.mark.usefixtures("eager_training")``).

    For the modules that check what is built around a training (folds, tables, ensembles, packages) on 1-epoch
    trainings of a few slices, tracing the train step costs more than the steps themselves (about 5 of 7 s a
    training here). The graph-mode path users run stays covered by the other training tests (test_train,
    test_training_logic, test_keypoints)."""
    tf = pytest.importorskip("tensorflow")
    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(before)
