"""`gradcam-fast export`: writes a validated model; user errors are one line and exit 2."""

from __future__ import annotations

import pytest
import torch

from gradcam_fast import GradCAMSession
from gradcam_fast.cli import main


@pytest.mark.slow
def test_export_writes_a_validated_model(tmp_path, capsys):
    out = tmp_path / "vgg11.onnx"
    code = main(
        [
            "export",
            "--arch",
            "vgg11",
            "--weights",
            "random",
            "--image-size",
            "64",
            "-k",
            "2",
            "--target-layer",
            "features.19",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.strip() == str(out)
    meta = GradCAMSession(out, "cpu").metadata
    assert (meta.arch, meta.target_layer, meta.image_size, meta.num_targets) == (
        "vgg11",
        "features.19",
        64,
        2,
    )


def test_export_error_is_one_line_without_traceback(tmp_path, capsys):
    code = main(
        [
            "export",
            "--arch",
            "vgg11",
            "--weights",
            "random",
            "--target-layer",
            "features.99",
            "-o",
            str(tmp_path / "x.onnx"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    errors = [line for line in err.splitlines() if "error:" in line]  # warnings may precede
    assert len(errors) == 1 and errors[0].startswith(
        "gradcam-fast: error: VGG has no layer 'features.99'; close matches: features.9"
    )
    assert "Traceback" not in err


@pytest.mark.slow
def test_export_channel_weights_only_with_external_data(tmp_path, capsys):
    out = tmp_path / "cw.onnx"
    code = main(["export", "--arch", "vgg11", "--weights", "random", "--image-size", "32",
                 "--channel-weights-only", "--external-data", "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert out.with_name("cw.onnx.data").stat().st_size > 100_000_000  # the weights moved out
    session = GradCAMSession(out, "cpu", low_memory=True)
    assert session.metadata.gradients is False
    result = session(torch.zeros(2, 3, 32, 32))
    assert result.gradients is None and result.channel_weights.shape == (2, 1, 512)
