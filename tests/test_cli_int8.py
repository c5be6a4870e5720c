"""The int8 command-line options: `export --precision int8 --calibration DIR`, `--precision int8`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gradcam_fast import GradCAMSession
from gradcam_fast.cli import main


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "calibration"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "-o", "m.onnx", "--precision", "int8"], "int8 needs --calibration DIR"),
        (["export", "-o", "m.onnx", "--calibration", "."], "--calibration is for int8 models"),
        (["export", "-o", "m.onnx", "--int8"], "int8 needs --calibration DIR"),
        (["export", "-o", "m.onnx", "--fp16", "--int8"], "--fp16 and --int8 exclude each other"),
        (
            ["export", "-o", "m.onnx", "--precision", "float32", "--fp16"],
            "--precision float32 and --fp16 exclude each other",
        ),
        (["bench", "--precision", "int8"], "int8 needs --calibration DIR"),
        (["bench", "--precision", "float32", "--calibration", "."], "--calibration is for int8"),
    ],
)
def test_int8_option_mistakes_are_one_line_errors(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path / "cache"))
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_export_int8_and_bench_precision_int8(tmp_path, monkeypatch, capsys, photos):
    """A real VGG11 (random weights) at 32 px through the CLI; bench's session makes the int8
    model from the float32 export and caches it under a key holding the calibration set's
    hash."""
    out = tmp_path / "vgg11-int8.onnx"
    common = ["--arch", "vgg11", "--weights", "random", "--image-size", "32"]
    assert (
        main(
            ["export", *common, "--precision", "int8", "--calibration", str(photos), "-o", str(out)]
        )
        == 0
    )
    meta = GradCAMSession(out, "cpu").metadata
    assert (meta.precision, meta.calibration_images, meta.calibration_method) == (
        "int8",
        8,
        "minmax",
    )
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path / "cache"))
    bench = ["bench", *common, "--batch-size", "2", "--rounds", "1", "--device", "cpu"]
    assert main([*bench, "--precision", "int8", "--calibration", str(photos)]) == 0
    assert "precision='int8'" not in capsys.readouterr().out  # the table only
    [exported] = (tmp_path / "cache").glob("*.onnx")
    assert GradCAMSession(exported, "cpu").metadata.precision == "float32"
    int8 = sorted(p.name for p in (tmp_path / "cache" / "int8").glob("*.onnx"))
    assert len(int8) == 1 and "-onnxruntime-minmax-" in int8[0]
    Image.new("RGB", (40, 40), (9, 9, 9)).save(photos / "extra.png")
    assert main([*bench, "--precision", "int8", "--calibration", str(photos)]) == 0
    assert len(list((tmp_path / "cache" / "int8").glob("*.onnx"))) == 2  # another set


def test_export_deprecated_flags_name_the_new_option(capsys):
    """--fp16 and --int8 still choose the file's precision, with a note naming --precision;
    export's precision choices are export_onnx's."""
    import argparse

    from gradcam_fast.cli import precision
    from gradcam_fast.export.onnx_export import EXPORT_PRECISIONS

    parser = argparse.ArgumentParser()
    precision.add_precision_options(parser, export=True)
    offered = next(a.choices for a in parser._actions if a.dest == "precision")
    assert tuple(offered) == EXPORT_PRECISIONS
    assert precision.precision_kwargs(parser.parse_args(["--fp16"])) == {"precision": "float16"}
    assert "--fp16 is deprecated: use --precision float16" in capsys.readouterr().err
    args = parser.parse_args(["--int8", "--calibration", "photos"])
    assert precision.precision_kwargs(args)["precision"] == "int8"
    assert "--int8 is deprecated: use --precision int8" in capsys.readouterr().err
    assert precision.precision_kwargs(parser.parse_args([])) == {"precision": "float32"}
