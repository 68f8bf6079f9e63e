"""Static checks of the Slicer module (no Slicer needed): the .ui, the module file and the CMake files agree.

Everything here parses files (xml.etree, ast, regular expressions); nothing imports the module or its Lib.
"""

from __future__ import annotations

import ast
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "IVDSegmentation"
MODULE_FILE = MODULE_DIR / "IVDSegmentation.py"
PANEL_FILE = MODULE_DIR / "IVDSegmentationLib" / "gui" / "trainingpanel.py"  # the Training section
UI_FILE = MODULE_DIR / "Resources" / "UI" / "IVDSegmentation.ui"
MODULE_CMAKE = MODULE_DIR / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"
CATALOG_ENTRY = ROOT / "IVDSegmentation.json"  # the Extensions Index entry (replaces the .s4ext format)
HEAVY_IMPORTS = {"tensorflow", "onnxruntime", "keras", "tf2onnx", "onnx", "torch"}

# What slicer.parameterNodeWrapper's GUI connectors accept (Base/Python/slicer/parameterNodeWrapper/guiConnectors.py):
# widget class -> pattern of the annotation it can represent.
CONNECTABLE = {
    "qMRMLNodeComboBox": r"^(vtkMRML\w+|slicer\.vtkMRML\w+)( \| (vtkMRML\w+|None))*$",
    "QSpinBox": r"^(int|Annotated\[int, .*\])$",
    "QSlider": r"^Annotated\[int, .*(WithinRange|Minimum).*\]$",
    "QComboBox": r"^Annotated\[(str|int|float|bool), .*Choice\(.*\]$",
    "ctkComboBox": r"^Annotated\[(str|int|float|bool), .*Choice\(.*\]$",
    "QLineEdit": r"^(str|Annotated\[str, .*\])$",
    "QCheckBox": r"^(bool|Annotated\[bool, .*\])$",
    "QDoubleSpinBox": r"^(float|int|Annotated\[(float|int), .*\])$",
    "ctkSliderWidget": r"^(float|int|Annotated\[(float|int), .*\])$",
    "ctkPathLineEdit": r"^(pathlib\.)?(Path|PosixPath|WindowsPath)$",
}


# ------------------------------------------------------------------ helpers
def _ui_root() -> ET.Element:
    return ET.parse(UI_FILE).getroot()


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in _ui_root().iter("widget")}


def _bound_widgets() -> dict[str, tuple[str, str]]:
    """objectName -> (widget class, SlicerParameterName) for widgets bound to the parameter node."""
    bound = {}
    for name, widget in _ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = (widget.get("class"), prop.findtext("string"))
    return bound


def _module_tree(path: Path = MODULE_FILE) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _top_level_imports(tree: ast.Module) -> set[str]:
    """Modules imported when the file is loaded (not inside functions)."""
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return imported


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"{MODULE_FILE.name} has no class {name}"
    return found[0]


def _fields(cls: ast.ClassDef) -> dict[str, str]:
    return {s.target.id: ast.unparse(s.annotation) for s in cls.body
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def _decorated(tree: ast.Module, decorator: str) -> list[ast.ClassDef]:
    return [n for n in tree.body if isinstance(n, ast.ClassDef)
            and any(ast.unparse(d) == decorator for d in n.decorator_list)]


def _parameter_fields() -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class; the members of a @parameterPack field
    appear as "<field>.<member>", the name the parameter node stores and a SlicerParameterName binds."""
    tree = _module_tree()
    wrapped = _decorated(tree, "parameterNodeWrapper")
    assert len(wrapped) == 1, "expected exactly one @parameterNodeWrapper class"
    packs = {cls.name: _fields(cls) for cls in _decorated(tree, "parameterPack")}
    fields = {}
    for name, annotation in _fields(wrapped[0]).items():
        fields[name] = annotation
        for member, member_annotation in packs.get(annotation, {}).items():
            fields[f"{name}.{member}"] = member_annotation
    return fields


def _cmake_list(text: str, variable: str, module_name: str = "IVDSegmentation") -> list[str]:
    match = re.search(r"set\(\s*" + re.escape(variable) + r"\s+(.*?)\)", text, re.DOTALL)
    assert match, f"no set({variable} ...) in the CMake file"
    return [item.replace("${MODULE_NAME}", module_name) for item in match.group(1).split()]


def _module_cmake_text() -> str:
    return MODULE_CMAKE.read_text(encoding="utf-8")


# ------------------------------------------------------------------ the .ui
def test_ui_parses_and_has_the_panel_widgets():
    root = _ui_root()
    assert root.tag == "ui"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "IVDSegmentation"
    widgets = _ui_widgets()
    for name in ["inputVolumeSelector", "dicomButton", "modelSelector", "modelCardLabel", "installModelButton",
                 "deviceComboBox", "batchSizeSpinBox", "workerPythonPathLineEdit", "applyButton", "progressBar",
                 "statusLabel"]:
        assert name in widgets, f"{UI_FILE.name} has no widget {name}"


def test_form_and_grid_cells_hold_one_item_each():
    """Two items in one cell of a form or grid layout are drawn on top of each other (Qt Designer never writes it;
    an edit by hand can)."""
    for layout in _ui_root().iter("layout"):
        if layout.get("class") not in ("QFormLayout", "QGridLayout"):
            continue
        cells = [(item.get("row"), item.get("column")) for item in layout.findall("item")]
        doubled = sorted({c for c in cells if cells.count(c) > 1})
        assert not doubled, f"{layout.get('name')}: cells {doubled} hold two items"


def test_ui_object_names_are_unique():
    names = [w.get("name") for w in _ui_root().iter("widget")]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", [MODULE_FILE, PANEL_FILE], ids=lambda p: p.name)
def test_every_ui_widget_used_in_code_exists(path):
    names = set(_ui_widgets())
    used = {node.attr for node in ast.walk(_module_tree(path)) if isinstance(node, ast.Attribute) and (
            (isinstance(node.value, ast.Attribute) and node.value.attr == "ui")  # self.ui.<widget>
            or (isinstance(node.value, ast.Name) and node.value.id == "ui"))}  # ui = self.ui; ui.<widget>
    assert used, f"{path.name} uses no self.ui.<widget>"
    assert used <= names, f"used in {path.name} but missing from {UI_FILE.name}: {sorted(used - names)}"


def test_training_section_is_collapsed_and_bound():
    widgets = _ui_widgets()
    section = widgets["trainingCollapsibleButton"]
    assert section.get("class") == "ctkCollapsibleButton"
    assert any(p.get("name") == "collapsed" and p.findtext("bool") == "true" for p in section.findall("property"))
    bound = {parameter.removeprefix("training.") for _, parameter in _bound_widgets().values()
             if parameter.startswith("training.")}
    for parameter in ["datasetFolder", "exportSize128", "exportSize192", "exportSize256", "valFraction",
                      "testFraction", "seed",
                      "backgroundChannel", "network", "trainSize", "activation", "epochs", "trainBatchSize",
                      "learningRate", "loss", "trainedModelName", "runFolder", "contextSlices", "baseFilters",
                      "augmentation", "sourceSampling", "halfWeights"]:
        assert parameter in bound, f"no widget of the Training section is bound to {parameter}"


def test_each_relabelled_combo_box_names_every_choice_of_its_parameter():
    """_relabel(ui.X, LABELS) renames the items the parameter's Choice made; a label for no choice, or a choice
    without a label, would show the user a bare key or nothing."""
    tree = _module_tree(PANEL_FILE)
    labels = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id.endswith("_LABELS")}
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "_relabel"]
    assert len(calls) >= 6
    fields, bound = _parameter_fields(), _bound_widgets()
    for call in calls:
        widget, table = ast.unparse(call.args[0]).removeprefix("ui."), ast.unparse(call.args[1])
        annotation = fields[bound[widget][1]]
        choices = ast.literal_eval(re.search(r"Choice\((\[.*?\])\)", annotation).group(1))
        assert list(labels[table]) == choices, f"{table} against the choices of {bound[widget][1]}"


def test_every_option_the_training_panel_passes_is_an_option_of_ivdseg_train():
    """The flags of the panel's _start and of TrainingLogic.startTraining are parsed by ivdseg train (a misspelt one
    would end every training from Slicer in a usage error)."""
    from ivdseg import cli

    def body(path, name):
        return next(ast.unparse(n) for n in ast.walk(_module_tree(path))
                    if isinstance(n, ast.FunctionDef) and n.name == name)

    source = body(PANEL_FILE, "_start") + body(MODULE_DIR / "IVDSegmentationLib" / "training.py", "startTraining")
    flags = set(re.findall(r"'(--[a-z][a-z-]+)'", source))
    assert {"--base-filters", "--augmentation", "--source-sampling", "--weights", "--context-slices",
            "--network", "--size"} <= flags
    train = cli.build_parser()._subparsers._group_actions[0].choices["train"]
    known = {option for action in train._actions for option in action.option_strings}
    assert flags <= known, sorted(flags - known)


def test_every_bound_widget_names_a_parameter_of_a_connectable_type():
    fields = _parameter_fields()
    bound = _bound_widgets()
    assert bound, "no widget carries a SlicerParameterName property"
    for widget, (widget_class, parameter) in bound.items():
        assert parameter in fields, f"{widget} is bound to {parameter!r}, which the parameter node does not have"
        pattern = CONNECTABLE.get(widget_class)
        assert pattern, f"{widget}: no parameter node GUI connector is known for {widget_class}"
        assert re.match(pattern, fields[parameter]), \
            f"{widget} ({widget_class}) cannot represent {parameter}: {fields[parameter]}"


def test_parameter_node_holds_the_panel_state():
    fields = _parameter_fields()
    for name in ["inputVolume", "modelName", "device", "batchSize", "workerPython", "outputSegmentation"]:
        assert name in fields, f"the parameter node has no field {name}"
    assert "Choice" in fields["device"] and "WithinRange(1, 256)" in fields["batchSize"]


def test_mrml_widgets_get_the_scene():
    root = _ui_root()
    mrml = {name for name, w in _ui_widgets().items() if w.get("class", "").startswith("qMRML")} - {"IVDSegmentation"}
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == "IVDSegmentation" and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    assert mrml <= connected, f"MRML widgets without the scene connection: {sorted(mrml - connected)}"


def test_custom_widgets_are_declared():
    root = _ui_root()
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in used if c.startswith(("qMRML", "qSlicer", "ctk"))}
    assert custom <= declared, f"undeclared custom widgets: {sorted(custom - declared)}"


# ------------------------------------------------------------------ the module file
def test_module_file_compiles_and_stays_thin():
    source = MODULE_FILE.read_text(encoding="utf-8")
    compile(source, str(MODULE_FILE), "exec")
    assert len(source.splitlines()) < 500
    compile(PANEL_FILE.read_text(encoding="utf-8"), str(PANEL_FILE), "exec")


def _module_path(name: str) -> Path | None:
    """The file of a module of the module folder (IVDSegmentationLib.x, ivdseg.x.y), or None (third party)."""
    base = MODULE_DIR.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _load_time_imports(path: Path, seen=None) -> set[str]:
    """Third-party modules imported when ``path`` loads, through every module of the module folder it imports at
    load time (imports inside functions do not count: they run on use)."""
    seen = set() if seen is None else seen
    if path in seen:
        return set()
    seen.add(path)
    tree = _module_tree(path)
    package = ".".join(path.relative_to(MODULE_DIR).with_suffix("").parts[:-1])
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    third_party = set()
    for name in names:
        parts = name.split(".")
        local = [_module_path(".".join(parts[:n])) for n in range(1, len(parts) + 1)]
        if any(local):
            for found in filter(None, local):
                third_party |= _load_time_imports(found, seen)
        else:
            third_party.add(parts[0])
    return third_party


# What a fresh Slicer has: the module must load with these alone (the Python standard library aside).
SLICER_PROVIDES = {"qt", "ctk", "slicer", "vtk", "numpy", "pydicom", "DICOMLib"}


def test_module_loads_with_what_a_fresh_slicer_has():
    """Following every load-time import of the module file through IVDSegmentationLib and ivdseg: nothing beyond
    Slicer's own packages (no OpenCV, ONNX Runtime, TensorFlow, nibabel, pynrrd, slicerio)."""
    import sys

    third_party = _load_time_imports(MODULE_FILE) - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party <= SLICER_PROVIDES, sorted(third_party - SLICER_PROVIDES)
    assert "IVDSegmentationLib" in {p.split(".")[0] for p in _top_level_imports(_module_tree())}


def test_only_the_module_file_stands_at_the_top_of_the_module_folder():
    """Slicer's scripted-module factory loads every top-level .py of the folder as a module
    (qSlicerScriptedLoadableModuleFactory); a helper there fails at every start ("class ... was not found")."""
    assert sorted(p.name for p in MODULE_DIR.glob("*.py")) == ["IVDSegmentation.py"]


def test_module_file_imports_nothing_heavy():
    imported = set()
    for node in ast.walk(_module_tree()):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    roots = {name.split(".")[0] for name in imported}
    assert not roots & HEAVY_IMPORTS, f"heavy imports in the module file: {sorted(roots & HEAVY_IMPORTS)}"
    # The GUI reaches the core through IVDSegmentationLib only (DESIGN.md, the four layers).
    assert "ivdseg" not in roots


def test_module_classes_follow_slicer_naming():
    tree = _module_tree()
    bases = {
        "IVDSegmentation": {"ScriptedLoadableModule"},
        "IVDSegmentationWidget": {"ScriptedLoadableModuleWidget", "VTKObservationMixin"},
        "IVDSegmentationLogic": {"ScriptedLoadableModuleLogic"},
        "IVDSegmentationTest": {"ScriptedLoadableModuleTest"},
    }
    for name, expected in bases.items():
        found = {ast.unparse(b) for b in _class(tree, name).bases}
        assert expected <= found, f"{name} should derive from {sorted(expected)}"


def test_self_test_runs_real_tests():
    test_class = _class(_module_tree(), "IVDSegmentationTest")
    methods = {f.name: f for f in test_class.body if isinstance(f, ast.FunctionDef)}
    tests = [name for name in methods if name.startswith("test_")]
    assert tests, "IVDSegmentationTest has no test_ method"
    called = {ast.unparse(c.func) for c in ast.walk(methods["runTest"]) if isinstance(c, ast.Call)}
    assert "self.setUp" in called
    # each test is called by name or named in the sequence runTest loops over (calling each in turn)
    named = {ast.unparse(a) for a in ast.walk(methods["runTest"]) if isinstance(a, ast.Attribute)}
    loops_and_calls = any(isinstance(n, ast.For) and any(isinstance(c, ast.Call) and ast.unparse(c.func) == n.target.id
                                                         for c in ast.walk(n)) for n in ast.walk(methods["runTest"]))
    for name in tests:
        assert f"self.{name}" in called or (f"self.{name}" in named and loops_and_calls), \
            f"runTest does not call {name}"
        body = [s for s in methods[name].body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
        assert body, f"{name} is empty"
    source = ast.unparse(test_class)
    assert "runAllScenarios" in source or "scenario" in source


# ------------------------------------------------------------------ CMake
def _python_files() -> list[str]:
    return sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                  if "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts))


def test_every_python_file_is_listed_in_cmake():
    listed = _cmake_list(_module_cmake_text(), "MODULE_PYTHON_SCRIPTS")
    missing = sorted(set(_python_files()) - set(listed))
    assert not missing, f"add to MODULE_PYTHON_SCRIPTS in {MODULE_CMAKE}: {missing}"


def test_every_listed_file_exists():
    text = _module_cmake_text()
    for variable in ["MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES"]:
        for item in _cmake_list(text, variable):
            assert (MODULE_DIR / item).is_file(), f"{variable} lists {item}, which does not exist"


@pytest.mark.parametrize("folder", ["Resources/UI", "Resources/Icons", "Resources/Terminology"])
def test_every_resource_file_is_listed_in_cmake(folder):
    listed = set(_cmake_list(_module_cmake_text(), "MODULE_PYTHON_RESOURCES"))
    on_disk = {p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / folder).rglob("*") if p.is_file()}
    assert on_disk, f"{folder} is empty"
    assert on_disk <= listed, f"add to MODULE_PYTHON_RESOURCES: {sorted(on_disk - listed)}"


def test_module_cmake_builds_the_scripted_module_with_tests():
    text = _module_cmake_text()
    assert re.search(r"set\(MODULE_NAME IVDSegmentation\)", text)
    macro = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.DOTALL)
    assert macro, "no slicerMacroBuildScriptedModule"
    for word in ["NAME ${MODULE_NAME}", "SCRIPTS ${MODULE_PYTHON_SCRIPTS}", "RESOURCES ${MODULE_PYTHON_RESOURCES}",
                 "WITH_GENERIC_TESTS"]:
        assert word in macro.group(1)
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\)", text, re.DOTALL)


def test_top_level_cmake_is_a_slicer_extension():
    text = TOP_CMAKE.read_text(encoding="utf-8")
    for variable in ["HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS"]:
        assert re.search(rf'set\(EXTENSION_{variable} "[^"]+"\)', text), f"EXTENSION_{variable} is not set"
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text
    for line in ["project(IVDSegmentation)", "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                 "add_subdirectory(IVDSegmentation)", "include(${Slicer_EXTENSION_CPACK})"]:
        assert line in text, f"{TOP_CMAKE.name} lacks {line}"


# Slicer's Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json: required and allowed properties (it admits
# no others).
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_ALLOWED = CATALOG_REQUIRED | {"scm_revision", "scm_type", "build_dependencies", "dicom_support_rule",
                                      "build_subdirectory", "enabled", "tier"}


def test_catalog_entry_follows_the_schema_and_agrees_with_cmake():
    import json

    entry = json.loads(CATALOG_ENTRY.read_text(encoding="utf-8"))
    assert CATALOG_REQUIRED <= set(entry) <= CATALOG_ALLOWED, sorted(set(entry) ^ CATALOG_ALLOWED)
    assert entry["$schema"].endswith("/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["category"] == "Segmentation" and entry["scm_type"] == "git" and entry["build_dependencies"] == []
    assert isinstance(entry["enabled"], bool) and entry["tier"] in range(1, 6)
    cmake = TOP_CMAKE.read_text(encoding="utf-8")
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"#]+)', cmake).group(1)
    assert homepage.rstrip("/") == entry["scm_url"].rstrip("/")
    assert 'set(EXTENSION_DEPENDS "NA")' in cmake
    assert not list(ROOT.glob("*.s4ext"))


def test_screenshot_and_icon_urls_point_at_files_of_the_repository():
    cmake = TOP_CMAKE.read_text(encoding="utf-8")
    for variable in ("ICONURL", "SCREENSHOTURLS"):
        url = re.search(rf'set\(EXTENSION_{variable} "([^"]+)"\)', cmake).group(1)
        relative = url.split("/main/", 1)[1]
        data = (ROOT / relative).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", relative


@pytest.mark.parametrize("icon", ["IVDSegmentation/Resources/Icons/IVDSegmentation.png",
                                  "Resources/Icons/IVDSegmentation.png"])
def test_icons_are_128_pixel_pngs(icon):
    data = (ROOT / icon).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (128, 128)


# ------------------------------------------------------------------ GUI defects a real Slicer would hit
def _calls(path: Path) -> set[str]:
    return {ast.unparse(node.func) for node in ast.walk(_module_tree(path)) if isinstance(node, ast.Call)}


def test_self_test_never_skips_and_never_sleeps_on_the_gui_thread():
    """Reload and Test calls runTest() directly (ScriptedLoadableModule.onReloadAndTest): a skipTest there is a
    failure popup that stops the remaining tests, and a sleep freezes Slicer while the worker runs."""
    gui_files = [MODULE_FILE, *sorted((MODULE_DIR / "IVDSegmentationLib").rglob("*.py"))]
    for path in gui_files:
        assert not {c for c in _calls(path) if c.endswith("skipTest")}, path.name
    assert not {c for c in _calls(MODULE_FILE) if c.endswith("sleep")}
    assert "qt.QEventLoop" in _calls(MODULE_FILE)  # waits by running Slicer's event loop


def test_the_dicom_dialog_is_deleted_and_the_terminology_loaded_at_start():
    assert "dialog.deleteLater" in _calls(MODULE_DIR / "IVDSegmentationLib" / "gui" / "dicomdialog.py")
    module_class = _class(_module_tree(), "IVDSegmentation")
    source = ast.unparse(module_class)
    assert 'slicer.app.connect(\'startupCompleted()\', self.loadTerminology)' in source
    assert "ensureTerminologyContext" in source


def test_no_gui_file_stops_the_worker_with_a_signal():
    """PythonSlicer forwards no signal: terminate(), send_signal() or kill() of the Popen reach the launcher only."""
    for path in [MODULE_FILE, *sorted((MODULE_DIR / "IVDSegmentationLib" / "gui").glob("*.py"))]:
        calls = _calls(path)
        assert not {c for c in calls if c.endswith((".terminate", ".send_signal", "process.kill"))}, path.name
