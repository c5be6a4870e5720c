"""The package's layers: each subpackage imports only from the layers below it.

LAYERS is the order, lowest first (README.md, "Layout", says what each one holds). Imports are
read from the source with `ast` (tests/package_imports.py: module level, inside functions and
under TYPE_CHECKING, relative and absolute), so an import hidden in a function counts. A module
may import its own layer and any lower one; the package's top level (its lazy public names and
the test helpers of testing.py) stands outside the layers.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

from package_imports import imports_of, modules

import gradcam_fast

PACKAGE = Path(gradcam_fast.__file__).resolve().parent

LAYERS = [
    "cams",  # the CAM arithmetic on tensors
    "format",  # the file's metadata, results, protocols, option lists, input checks, preprocessing
    "model",  # loading CNNs, their names, tracing them to the target
    "core",  # the Grad-CAM graph and its VJP rules
    "check",  # the eager reference and the comparisons against it
    "io",  # image files, listings, overlays, calibration sets
    "runtime",  # the session and its backends, int8 models of float32 files
    "export",  # export to ONNX and its validation
    "app",  # the explain pipeline, the model cache, classes, timing
    "services",  # Ray Data and Ray Serve
    "audit",  # the explanations' audit
    "cli",  # the command line
]
OUTSIDE_THE_LAYERS = {"__init__.py", "testing.py"}  # the package's top-level modules
# Layers that are namespaces only: their __init__ is a docstring, so importing one module of a
# layer does not import the rest of it (audit and cli have their own entry points there).
DOCSTRING_ONLY = set(LAYERS) - {"audit", "cli"}


def layer_of(module: str, layers: list[str]) -> str | None:
    """The layer of a dotted module name (its first subpackage), None outside the layers."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in layers else None


def wrong_way_imports(package_dir: Path, layers: list[str]) -> list[str]:
    """Each import of a higher layer, as "module:line imports target (layer a below layer b)"."""
    known = modules(package_dir)
    found = []
    for name, path in known.items():
        here = layer_of(name, layers)
        if here is None:
            continue
        for target, line in sorted(imports_of(name, path, known).items()):
            there = layer_of(target, layers)
            if there is not None and layers.index(there) > layers.index(here):
                found.append(f"{name}:{line} imports {target} ({here} is below {there})")
    return found


def test_no_module_imports_from_a_higher_layer():
    wrong = wrong_way_imports(PACKAGE, LAYERS)
    assert not wrong, "imports from a higher layer:\n" + "\n".join(wrong)


def test_every_module_is_in_a_declared_layer():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(LAYERS), "declare each subpackage in LAYERS, once"
    loose = {p.name for p in PACKAGE.glob("*.py")} - OUTSIDE_THE_LAYERS
    assert not loose, f"modules outside every layer: {sorted(loose)}"
    for name in modules(PACKAGE):
        assert name == "gradcam_fast" or name.count(".") == 1 or layer_of(name, LAYERS), name


def test_namespace_layers_hold_a_docstring_only():
    for layer in DOCSTRING_ONLY:
        body = ast.parse((PACKAGE / layer / "__init__.py").read_text(encoding="utf-8")).body
        assert len(body) == 1 and isinstance(body[0], ast.Expr), f"{layer}/__init__.py"
        assert isinstance(body[0].value, ast.Constant) and body[0].value.value.strip(), layer


def _plant(path: Path, code: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + code, encoding="utf-8")


def test_the_checker_reports_planted_wrong_way_imports(tmp_path):
    """A copy of the package passes; three imports of a higher layer planted in it (relative at
    module level, absolute inside a function, a whole subpackage by `from .. import`) are each
    reported, and an import of a lower layer is not."""
    copy = tmp_path / "gradcam_fast"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert wrong_way_imports(copy, LAYERS) == []

    _plant(copy / "io" / "images.py", "from ..export.pixels import RawPixels\n")
    _plant(copy / "cams" / "methods.py", "def later():\n    import gradcam_fast.app.explain\n")
    _plant(copy / "format" / "result.py", "from .. import services\n")
    _plant(copy / "export" / "pixels.py", "from ..runtime import session\n")  # downwards
    wrong = wrong_way_imports(copy, LAYERS)
    assert [line.split(":")[0] for line in wrong] == [
        "gradcam_fast.cams.methods",
        "gradcam_fast.format.result",
        "gradcam_fast.io.images",
    ], wrong
    assert "gradcam_fast.app.explain (cams is below app)" in wrong[0]
    assert "imports gradcam_fast.services (format is below services)" in wrong[1]
