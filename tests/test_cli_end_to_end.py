"""Documented options run end to end through the command line (issue 11, item 5): each test
asserts on the files and results produced, against the library's session on the same image.

`export` and the cache are given a tiny seeded VGG in place of the named arch (the loader is
patched), so that these run in seconds; the command-line paths are the real ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx
from gradcam_fast.cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, main
from gradcam_fast.io.colormaps import colormap_lut
from gradcam_fast.io.images import load_image, model_view, preprocess

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
CAT, COFFEE = SAMPLES / "cat.jpg", SAMPLES / "coffee.jpg"
SIZE = 32


def tiny_vgg():
    return make_tiny_vgg(seed=3)


@pytest.fixture
def tiny_loader(monkeypatch):
    """`load_vgg(arch, ...)` in the exporter returns the tiny VGG, whatever the arch."""
    monkeypatch.setattr(
        "gradcam_fast.export.onnx_export.load_model", lambda arch, weights, seed=0: tiny_vgg()
    )


@pytest.fixture(scope="module")
def float_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("float") / "tiny.onnx"
    return export_onnx(tiny_vgg(), path, image_size=SIZE)


def explain(capsys, *args) -> tuple[int, str]:
    status = main(["explain", *map(str, args)])
    return status, capsys.readouterr().err


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def session_maps(model: Path, image: Path, **call) -> np.ndarray:
    """The library's maps [K, S, S] for one file, preprocessed as the CLI does."""
    session = GradCAMSession(model, "cpu")
    meta = session.metadata
    picture = load_image(image)
    if meta.input_format == "uint8_nhwc":
        x = torch.from_numpy(model_view(picture, SIZE))[None]
    else:
        x = preprocess(picture, SIZE, meta.mean, meta.std)[None]
    return session(x, **call).cams[0].numpy()


def saved_map(out: Path, record: dict, k: int = 0) -> np.ndarray:
    return np.load(out / [f for f in record["outputs"] if f.endswith(".npy")][k])


def test_aug_smooth_saves_the_smoothed_maps(capsys, float_model, tmp_path):
    status, err = explain(
        capsys, CAT, "--out", tmp_path, "--model", float_model, "--aug-smooth", "--save-maps", "-q"
    )
    assert status == EXIT_OK, err
    [record] = records(tmp_path)
    saved = saved_map(tmp_path, record)
    np.testing.assert_allclose(saved, session_maps(float_model, CAT, aug_smooth=True)[0], atol=1e-6)
    assert not np.allclose(saved, session_maps(float_model, CAT)[0], atol=1e-3)  # really smoothed


@pytest.mark.slow
def test_fp16_export_then_explain_with_it(capsys, tiny_loader, float_model, tmp_path):
    path = tmp_path / "fp16.onnx"
    argv = ["export", "--arch", "vgg11", "--weights", "random", "--image-size", str(SIZE)]
    assert main([*argv, "--precision", "float16", "-o", str(path)]) == EXIT_OK, (
        capsys.readouterr().err
    )
    assert capsys.readouterr().out.strip() == str(path)
    assert GradCAMSession(path, "cpu").metadata.precision == "float16"
    out = tmp_path / "out"
    status, err = explain(capsys, CAT, COFFEE, "--out", out, "--model", path, "--save-maps", "-q")
    assert status == EXIT_OK, err
    for record, image in zip(records(out), (CAT, COFFEE), strict=True):
        saved = saved_map(out, record)
        np.testing.assert_allclose(saved, session_maps(path, image)[0], atol=1e-6)
        # float16 body: near the float32 model's map (measured max difference 3.4e-4)
        assert np.abs(saved - session_maps(float_model, image)[0]).max() < 5e-2


@pytest.mark.slow
def test_raw_pixel_model_through_explain(capsys, tiny_loader, float_model, tmp_path):
    """`export --raw-pixels`, then `explain` feeds it decoded pixels: the same predictions and
    maps as the float model fed normalized tensors."""
    path = tmp_path / "raw.onnx"
    argv = ["export", "--arch", "vgg11", "--weights", "random", "--image-size", str(SIZE)]
    assert main([*argv, "--raw-pixels", "-o", str(path)]) == EXIT_OK, capsys.readouterr().err
    assert GradCAMSession(path, "cpu").metadata.input_format == "uint8_nhwc"
    outs = {}
    for name, model in (("raw", path), ("float", float_model)):
        outs[name] = tmp_path / name
        status, err = explain(capsys, CAT, COFFEE, "--out", outs[name], "--model", model,
                              "--save-maps", "-q")  # fmt: skip
        assert status == EXIT_OK, err
    for raw, plain in zip(records(outs["raw"]), records(outs["float"]), strict=True):
        assert raw["explained"] == plain["explained"]
        assert [p["index"] for p in raw["predictions"]] == [
            p["index"] for p in plain["predictions"]
        ]
        np.testing.assert_allclose(
            saved_map(outs["raw"], raw), saved_map(outs["float"], plain), atol=1e-5
        )


def test_same_file_name_in_two_folders_gives_two_outputs(capsys, float_model, tmp_path):
    for folder, source in (("a", CAT), ("b", COFFEE)):
        (tmp_path / folder).mkdir()
        shutil.copy(source, tmp_path / folder / "photo.jpg")
    out = tmp_path / "out"
    for batch in ("1", "16"):  # the two files in one batch, and in two
        status, err = explain(capsys, tmp_path / "a", tmp_path / "b", "--out", out, "--model",
                              float_model, "--save-maps", "--batch-size", batch, "-q")  # fmt: skip
        assert status == EXIT_OK, err
        got = records(out)
        assert [Path(r["path"]).parent.name for r in got] == ["a", "b"]
        names = [f for r in got for f in r["outputs"]]
        assert len(set(names)) == len(names) == 4  # distinct names: nothing overwritten
        assert sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".npy")) == sorted(
            names
        )
        for record, source in zip(got, (CAT, COFFEE), strict=True):
            np.testing.assert_allclose(
                saved_map(out, record), session_maps(float_model, source)[0], atol=1e-6
            )


@contextlib.contextmanager
def unwritable(folder: Path):
    """`folder` made unwritable, also for root (the immutable attribute; skipped where it
    cannot be set); restored after."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a folder unwritable")
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i failed here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_unwritable_output_folder_is_one_line_naming_it(capsys, float_model, tmp_path):
    """Nothing can be explained into a folder that cannot be written: exit 2 (a usage error,
    before the model is opened) and one line naming the folder, not a temporary file's name."""
    out = tmp_path / "out"
    out.mkdir()
    with unwritable(out):
        status, err = explain(capsys, CAT, "--out", out, "--model", tmp_path / "not-needed.onnx")
    assert status == EXIT_ERROR
    assert err.splitlines() == [
        f"gradcam-fast: error: --out {out}: cannot write into the folder "
        + ("(Operation not permitted)" if os.geteuid() == 0 else "(Permission denied)")
    ]
    assert list(out.iterdir()) == []


def test_outputs_that_fail_to_write_fail_their_files(capsys, float_model, tmp_path, monkeypatch):
    """A folder that stops taking files during the run (disk full): each image fails with one
    line naming the folder and the reason, results.jsonl says so, exit 1."""

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("gradcam_fast.app.steps.save_png", disk_full)
    out = tmp_path / "out"
    status, err = explain(capsys, CAT, COFFEE, "--out", out, "--model", float_model, "-q")
    assert status == EXIT_SOME_FAILED
    lines = err.splitlines()
    assert len(lines) == 2
    for line, image in zip(lines, (CAT, COFFEE), strict=True):
        assert line.startswith(f"gradcam-fast: {image}: cannot write its outputs into {out}")
        assert line.endswith("No space left on device")
    assert [r["error"] for r in records(out)] == [
        line.removeprefix("gradcam-fast: ") for line in lines
    ]


def test_non_default_colormap_is_drawn(capsys, float_model, tmp_path):
    """With --alpha 1 the overlay is the colored map alone: every pixel is the viridis color of
    its saved map value (matplotlib's indexing, floor(v * 256)), and differs from jet's."""
    pngs = {}
    for colormap in ("jet", "viridis"):
        out = tmp_path / colormap
        status, err = explain(capsys, CAT, "--out", out, "--model", float_model, "--alpha", "1",
                              "--colormap", colormap, "--save-maps", "-q")  # fmt: skip
        assert status == EXIT_OK, err
        [record] = records(out)
        with Image.open(out / record["outputs"][0]) as png:
            pngs[colormap] = np.asarray(png)
        index = np.clip((saved_map(out, record) * 256).astype(np.int64), 0, 255)
        np.testing.assert_array_equal(pngs[colormap], colormap_lut(colormap)[index])
    assert (pngs["jet"] != pngs["viridis"]).any(axis=-1).mean() > 0.9


@pytest.mark.slow
def test_explain_with_another_arch_exports_caches_and_explains(capsys, tmp_path, monkeypatch):
    """`--arch mobilenet_v3_small --weights random`: the real loader, the cache, the arch's own
    preprocessing in the metadata, maps equal to the library's on the same view."""
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    status, err = explain(
        capsys, CAT, "--arch", "mobilenet_v3_small", "--weights", "random", "--image-size", "64",
        "--save-maps", "--out", out,
    )  # fmt: skip
    assert status == EXIT_OK, err
    [model] = (tmp_path / "cache").glob("mobilenet_v3_small-*.onnx")
    session = GradCAMSession(model, "cpu")
    meta = session.metadata
    assert (meta.arch, meta.target_layer, meta.image_size) == (
        "mobilenet_v3_small",
        "features.12.2",
        64,
    )
    [record] = records(out)
    from gradcam_fast.io.images import preprocessing_of

    x = preprocess(load_image(CAT), 64, meta.mean, meta.std, **preprocessing_of(meta))[None]
    np.testing.assert_allclose(saved_map(out, record), session(x).cams[0, 0].numpy(), atol=1e-5)
