"""export_scripts/export_vgg19.py is `gradcam-fast export`: same options, same result."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "export_scripts" / "export_vgg19.py"


def _options(help_text: str) -> set[str]:
    return {word.strip("[],") for word in help_text.split() if word.startswith(("-", "[-"))}


@pytest.mark.slow
def test_script_has_every_option_of_the_export_command():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=env
    )
    command = subprocess.run(
        [sys.executable, "-m", "gradcam_fast.cli", "export", "--help"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert script.returncode == command.returncode == 0, script.stderr + command.stderr
    options = _options(script.stdout)
    assert {"--channel-weights-only", "--external-data", "--opset", "--arch"} <= options
    assert options == _options(command.stdout)


def test_script_exports_a_model(tmp_path, monkeypatch, capsys):
    """The script run as __main__ with the newer options; a tiny VGG stands in for VGG19 (the
    exporter's loader is patched) so that it takes seconds."""
    monkeypatch.setattr(
        "gradcam_fast.export.onnx_export.load_model",
        lambda arch, weights, seed=0: make_tiny_vgg(seed=seed),
    )
    out = tmp_path / "model.onnx"
    argv = [str(SCRIPT), "-o", str(out), "--weights", "random", "--image-size", "32", "-k", "2"]
    argv += ["--channel-weights-only", "--external-data", "--opset", "18"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert done.value.code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    session = GradCAMSession(out, "cpu")
    meta = session.metadata
    assert (meta.image_size, meta.num_targets, meta.gradients) == (32, 2, False)
    result = session(torch.zeros(1, 3, 32, 32))
    assert result.channel_weights.shape == (1, 2, 16)
