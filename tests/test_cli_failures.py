"""Every CLI failure exits non-zero with one clear line on stderr and no traceback (unless
--verbose). A missing --model, a misspelled class name and the --class/--top-k conflicts are
covered in test_explain.py; this file covers the rest."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import onnx
import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import export_onnx
from gradcam_fast.cli import EXIT_ERROR, error_line, main

CAT = Path(__file__).resolve().parent.parent / "examples" / "images" / "cat.jpg"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_failures")
    good = export_onnx(make_tiny_vgg(), root / "tiny.onnx", image_size=32, validate=False)
    (root / "truncated.onnx").write_bytes(good.read_bytes()[:3000])
    (root / "text.onnx").write_text("not a model\n")
    plain = root / "plain.onnx"
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)).eval()
    torch.onnx.export(conv, (torch.zeros(1, 3, 8, 8),), plain, dynamo=True, external_data=False)
    _edit_metadata(good, root / "bad_json.onnx", lambda props: props.update(arch="{"))
    _edit_metadata(good, root / "no_arch.onnx", lambda props: props.pop("arch"))
    _graft_metadata(good, plain, root / "contract.onnx")
    (root / "a_file").write_text("x")
    torch.save({"weight": torch.zeros(2)}, root / "other.pt")
    (root / "evil.pt").write_bytes(pickle.dumps(_Evil(root / "PWNED")))
    return {p.stem: p for p in root.iterdir()} | {"root": root}


def _edit_metadata(source: Path, dest: Path, edit) -> None:
    """Copy of `source` with its gradcam_fast metadata (keys without the prefix) edited."""
    proto = onnx.load(source)
    props = {p.key.removeprefix("gradcam_fast."): p.value for p in proto.metadata_props}
    edit(props)
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=f"gradcam_fast.{key}", value=value)
    onnx.save(proto, dest)


def _graft_metadata(source: Path, other: Path, dest: Path) -> None:
    """`other` (not a Grad-CAM graph) carrying `source`'s gradcam_fast metadata."""
    proto = onnx.load(other)
    for prop in onnx.load(source).metadata_props:
        proto.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save(proto, dest)


class _Evil:
    """A pickle that would create a file when loaded with plain pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def one_error_line(err: str, phrase: str) -> str:
    """The stderr of a failed run: one 'error' line naming the problem (warnings aside)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if "warning:" not in line]
    assert len(lines) == 1, err
    assert "error: " in lines[0] and phrase in lines[0], lines[0]
    return lines[0]


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def explain_args(files, out: Path, *extra) -> list:
    return ["explain", CAT, "--out", out, "-q", *extra]


@pytest.mark.parametrize(
    ("model", "phrase"),
    [
        ("truncated", "is not a readable ONNX model (truncated, corrupt"),
        ("text", "is not a readable ONNX model"),
        ("plain", "not a gradcam_fast model"),
        ("root", "no model file"),  # a folder given as --model
        ("bad_json", "corrupt gradcam_fast metadata"),
        ("no_arch", "lacks gradcam_fast metadata fields ['arch']"),
        ("contract", "not the gradcam_fast contract"),
    ],
)
def test_unusable_model_files(capsys, files, tmp_path, model, phrase):
    code, err = run(capsys, *explain_args(files, tmp_path / "out", "--model", files[model]))
    assert code == EXIT_ERROR
    one_error_line(err, phrase)


@pytest.mark.parametrize(
    ("options", "phrase"),
    [
        (["--class", "5000"], "class index out of range; this model has classes 0..9"),
        (["--class", "-3"], "class index out of range"),
        (["--class", "zebra"], "carries no class names; pass a class index 0..9"),
        (["--device", "tpu"], "device must be 'auto', 'cpu' or 'cuda[:N]', got 'tpu'"),
        (["--device", "cpu", "--tensorrt"], "tensorrt=True needs device='cuda'"),
    ],
)
def test_bad_options_after_parsing(capsys, files, tmp_path, options, phrase):
    out = tmp_path / "out"
    code, err = run(capsys, *explain_args(files, out, "--model", files["tiny"], *options))
    assert code == EXIT_ERROR
    one_error_line(err, phrase)
    assert not (out / "results.jsonl").exists()


def test_cuda_without_a_gpu(capsys, files, tmp_path):
    import onnxruntime as ort

    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    argv = explain_args(files, tmp_path / "out", "--model", files["tiny"], "--device", "cuda")
    code, err = run(capsys, *argv)
    assert code == EXIT_ERROR
    one_error_line(err, "device='cuda'")


@pytest.mark.parametrize(
    ("out", "phrase"),
    [
        ("a_file", "is a file; give a folder"),
        ("a_file/sub", "cannot create the folder (Not a directory)"),
    ],
)
def test_unusable_output_folder(capsys, files, out, phrase):
    argv = explain_args(files, files["root"] / out, "--model", files["tiny"])
    code, err = run(capsys, *argv)
    assert code == EXIT_ERROR
    one_error_line(err, phrase)


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (
            ["explain", "x.jpg", "--out", "o", "--batch-size", "0"],
            "--batch-size: must be at least 1",
        ),
        (
            ["explain", "x.jpg", "--out", "o", "--image-size", "-5"],
            "--image-size: must be at least",
        ),
        (["explain", "x.jpg", "--out", "o", "--alpha", "2"], "--alpha: must be between 0 and 1"),
        (["explain", "x.jpg"], "the following arguments are required: -o/--out"),
        (["export", "-o", "x.onnx", "--arch", "vgg99"], "--arch: invalid choice"),
        (["nope"], "invalid choice"),
    ],
)
def test_usage_errors_are_one_line(capsys, argv, phrase):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_ERROR
    line = one_error_line(capsys.readouterr().err, phrase)
    assert line.endswith("--help)")


@pytest.mark.parametrize(
    ("weights", "phrase"),
    [
        ("other", "is not a state_dict of vgg11: missing keys"),
        ("evil", "cannot read weights file"),
        ("missing", "neither 'imagenet', 'random' nor an existing file"),
    ],
)
def test_export_with_bad_weights(capsys, files, tmp_path, weights, phrase):
    path = files.get(weights, tmp_path / "missing.pt")
    argv = ["export", "--arch", "vgg11", "--weights", path, "--image-size", "32", "-o"]
    code, err = run(capsys, *argv, tmp_path / "x.onnx", "--no-validate")
    assert code == EXIT_ERROR
    one_error_line(err, phrase)
    assert not (files["root"] / "PWNED").exists()  # the pickle's code never ran
    assert not (tmp_path / "x.onnx").exists()


def test_export_with_k_zero(capsys, tmp_path):
    argv = ["export", "--arch", "vgg11", "--weights", "random", "--image-size", "32", "-k", "0"]
    code, err = run(capsys, *argv, "-o", tmp_path / "x.onnx", "--no-validate")
    assert code == EXIT_ERROR
    one_error_line(err, "num_targets must be at least 1, got 0")


def test_bugs_and_os_errors_are_one_line_with_a_hint(capsys, files, tmp_path, monkeypatch):
    import gradcam_fast.app.explain as explain_module

    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(explain_module, "explain", broken)
    argv = explain_args(files, tmp_path / "out", "--model", files["tiny"])
    code, err = run(capsys, *argv)
    assert code == EXIT_ERROR
    one_error_line(err, "KeyError: 'internal' (rerun with --verbose for the traceback)")
    with pytest.raises(KeyError):  # --verbose: the exception (and its traceback) comes through
        main(["--verbose", *map(str, argv)])

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "out" / "results.jsonl"))

    monkeypatch.setattr(explain_module, "explain", disk_full)
    code, err = run(capsys, *argv)
    assert code == EXIT_ERROR
    one_error_line(err, "results.jsonl: No space left on device")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(explain_module, "explain", interrupted)
    code, err = run(capsys, *argv)
    assert code == 130 and err.strip() == "gradcam-fast: interrupted"


def test_error_line_formats():
    assert error_line(ValueError("a\n\n  b")) == "a b"
    assert error_line(FileNotFoundError(2, "No such file or directory", "m.onnx")) == (
        "m.onnx: No such file or directory"
    )
    assert error_line(MemoryError()) == "MemoryError (rerun with --verbose for the traceback)"
