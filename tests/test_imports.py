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
        "import gradcam_fast.images",
        "import gradcam_fast.cli",
    ],
)
def test_session_imports_leave_out_the_exporter_and_torchvision(statement):
    loaded = _modules_after(statement)
    heavy = {"onnx", "onnxscript", "torchvision", "torch.onnx"} & loaded
    assert not heavy, f"{statement!r} imported {sorted(heavy)}"


def test_cli_parser_module_does_not_import_torch():
    assert "torch" not in _modules_after("import gradcam_fast.cli")


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
try:
    main(["--version"])
except SystemExit:
    pass
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
