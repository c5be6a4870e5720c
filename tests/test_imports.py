"""What importing the package loads: a process that only runs sessions must not pay for the
exporter (onnx, onnxscript) or torchvision (about 160 MiB of RSS), see benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import gradcam_fast


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "statement",
    [
        "from gradcam_fast import GradCAMSession",
        "import gradcam_fast.io.images",
        "import gradcam_fast.cli",
    ],
)
def test_session_imports_leave_out_the_exporter_and_torchvision(statement):
    loaded = _modules_after(statement)
    heavy = {"onnx", "onnxscript", "torchvision", "torch.onnx", "openvino", "nncf"} & loaded
    assert not heavy, f"{statement!r} imported {sorted(heavy)}"


_NO_ONNXRUNTIME = """
import sys
sys.modules["onnxruntime"] = None  # `import onnxruntime` raises ImportError
import torch
from gradcam_fast import GradCAMSession
from gradcam_fast.testing import make_tiny_vgg
session = GradCAMSession.from_model(make_tiny_vgg(), image_size=32, device="cpu")
print(tuple(session(torch.randn(1, 3, 32, 32)).cams.shape))
"""


def test_the_torch_backend_runs_without_onnxruntime():
    """onnxruntime is an optional extra: the session module imports it only to open a file."""
    out = subprocess.run(
        [sys.executable, "-c", _NO_ONNXRUNTIME], capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[-2] == "(1, 1, 32, 32)"


def test_cli_parser_module_does_not_import_torch():
    assert "torch" not in _modules_after("import gradcam_fast.cli")


_HELP = """
import sys
from gradcam_fast.cli import main
for argv in ([{argv}],):
    try:
        main(list(argv))
    except SystemExit:
        pass
print(' '.join(sys.modules))
"""


@pytest.mark.parametrize("argv", ["--help", "explain --help", "export --help", "bench --help"])
def test_help_loads_neither_torch_nor_onnx(argv):
    """The parser module imports no subcommand's implementation: each handler imports the
    library when it runs, so `gradcam-fast --help` starts without torch or onnx."""
    code = _HELP.format(argv=", ".join(repr(a) for a in argv.split()))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: gradcam-fast" in out.stdout
    loaded = set(out.stdout.split())
    heavy = {"torch", "torchvision", "onnx", "onnxruntime", "onnxscript"} & loaded
    assert not heavy, f"gradcam-fast {argv} imported {sorted(heavy)}"


def test_names_offered_by_the_parser_are_those_implemented():
    from gradcam_fast.cams.methods import METHODS
    from gradcam_fast.model import loading
    from gradcam_fast.model.catalog import ARCHS, METHOD_NAMES

    assert tuple(METHODS) == METHOD_NAMES and loading.ARCHS is ARCHS


def test_every_public_name_resolves():
    for name in gradcam_fast.__all__:
        assert getattr(gradcam_fast, name).__name__ == name
    assert set(gradcam_fast.__all__) <= set(dir(gradcam_fast))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gradcam_fast.nope  # noqa: B018


_SPY = """
import os, sys
seen = {}
class Spy:  # records the OpenMP wait policy in force when torch is first imported
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "torch" not in seen:
            seen["torch"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Spy())
from gradcam_fast.cli import main
main(["bench", "--model", "missing.onnx", "--eager"])  # loads torch, then refuses: exit 2
print(seen.get("torch"))
"""


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_cli_makes_openmp_threads_sleep_before_torch_loads(given, expected):
    """torch's OpenMP reads OMP_WAIT_POLICY once, when it loads: the CLI must set it first
    (spinning OpenMP threads took cores from ONNX Runtime), and keep a user's own value."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run(
        [sys.executable, "-c", _SPY], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split()[-1] == expected
