"""`gradcam-fast explain`: outputs, results.jsonl, gallery, bad files and exit codes.

Most tests run a tiny seeded VGG (exported once per session, 32 x 32, K = 2, with a few ImageNet
class names) through `--model`; one runs the real path, export-on-first-use into the cache.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import onnx
import pytest
from PIL import Image
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx
from gradcam_fast.app.classes import resolve_classes
from gradcam_fast.app.steps import decode
from gradcam_fast.cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, main
from gradcam_fast.io.colormaps import overlay
from gradcam_fast.io.discover import collect_inputs
from gradcam_fast.io.images import (
    cam_to_image,
    load_image,
    model_crop,
    model_view,
    preprocess,
    preprocessing_of,
)
from gradcam_fast.model.loading import ModelInfo

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
NAMES = (
    "tabby", "tiger cat", "Persian cat", "coffee mug", "espresso",
    "space shuttle", "missile", "mask", "lab coat", "Egyptian cat",
)  # fmt: skip
SIZE = 32


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A seeded 3-block VGG with a small classifier over NAMES, exported with K = 2."""
    model = make_tiny_vgg(num_classes=len(NAMES), pool=7)
    model.gradcam_fast_info = ModelInfo(arch="vgg", weights="random:tiny", categories=NAMES)
    return export_onnx(
        model, tmp_path_factory.mktemp("model") / "tiny.onnx", image_size=SIZE, num_targets=2
    )


@pytest.fixture
def run(capsys):
    """main(["explain", ...]) -> (exit status, stderr)."""

    def call(*args: str | os.PathLike) -> tuple[int, str]:
        status = main(["explain", *map(str, args)])
        return status, capsys.readouterr().err

    return call


def read_results(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r["time_s"], float) and r["time_s"] >= 0 for r in records)
    by_name = {Path(r["path"]).name: r for r in records}
    assert len(by_name) == len(records)
    return by_name


def check_ok(out: Path, record: dict, k: int, size: tuple[int, int] = (SIZE, SIZE)) -> None:
    assert "error" not in record
    preds = record["predictions"]
    assert len(preds) == 5 and [p["name"] for p in preds] == [NAMES[p["index"]] for p in preds]
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert len(record["explained"]) == k
    pngs = [f for f in record["outputs"] if f.endswith(".png")]
    assert len(pngs) == k
    for file in record["outputs"]:
        assert (out / file).is_file() and "/" not in file
    for file in pngs:
        with Image.open(out / file) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == size
    assert not list(out.glob("*.part")) and not list(out.glob(".*"))


class Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src") and v is not None]


def gallery_links(out: Path) -> list[str]:
    parser = Links()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    for link in parser.links:
        parsed = urlparse(link)
        assert not parsed.scheme and not parsed.netloc and not link.startswith("/"), link
        assert (out / unquote(parsed.path)).is_file(), link
    return [unquote(link) for link in parser.links]


def png_declaring(width: int, height: int) -> bytes:
    """A valid little PNG whose header declares width x height RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def write_bad_files(folder: Path) -> dict[str, str]:
    """Generated unusable files, each with a phrase its error must contain."""
    jpeg = (SAMPLES / "cat.jpg").read_bytes()
    (folder / "huge.png").write_bytes(png_declaring(100_000, 100_000))
    (folder / "text.jpg").write_text("not a picture\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    return {
        "huge.png": "decompression bomb",
        "text.jpg": "not an image file",
        "empty.png": "empty file",
        "truncated.jpg": "truncated",
    }


# --------------------------------------------------------------------------- issue 2: the real path


@pytest.mark.slow
def test_explain_two_samples_exports_once_and_caches(run, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(cache))
    images = [SAMPLES / "cat.jpg", SAMPLES / "coffee.jpg"]
    common = ["--arch", "vgg11", "--weights", "random", "--image-size", SIZE, "-q"]
    status, err = run(*images, "--out", tmp_path / "a", *common)
    assert status == EXIT_OK, err
    [model] = cache.glob("*.onnx")
    assert "vgg11" in model.name and model.name.endswith(
        "-k1-cw.onnx"
    )  # Grad-CAM: the channel-weights model
    records = read_results(tmp_path / "a")
    assert set(records) == {"cat.jpg", "coffee.jpg"}
    for record in records.values():
        assert record["explained"] == [record["predictions"][0]["index"]]  # top-1 by default
        assert len(record["outputs"]) == 1 and record["predictions"][0]["name"]
        with Image.open(tmp_path / "a" / record["outputs"][0]) as image:
            assert image.size == (SIZE, SIZE)
    stamp = model.stat().st_mtime_ns
    status, err = run(images[0], "--out", tmp_path / "b", *common)
    assert status == EXIT_OK and model.stat().st_mtime_ns == stamp  # the cached export, reused
    again = read_results(tmp_path / "b")["cat.jpg"]
    assert again["predictions"] == records["cat.jpg"]["predictions"]
    status, err = run(images[0], "--out", tmp_path / "c", "--method", "layercam", *common)
    assert status == EXIT_OK, err  # LayerCAM needs the gradients: a second, full export
    assert {p.name for p in cache.glob("*.onnx")} == {model.name, model.name.replace("-cw", "")}


# --------------------------------------------------------------------------- folders and bad files


def test_mixed_folder_reports_bad_files_and_explains_the_rest(run, tiny_model, tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    shutil.copy(SAMPLES / "cat.jpg", folder)
    shutil.copy(SAMPLES / "coffee.jpg", folder / "sub")
    load_image(SAMPLES / "astronaut.jpg").save(folder / "sub" / "astronaut.webp")
    shutil.copy(SAMPLES / "rocket.jpg", folder / ".hidden")  # hidden: skipped
    (folder / "notes.txt").write_text("not an image extension: skipped")
    bad = write_bad_files(folder)
    out = folder / "out"  # inside the scanned folder: its PNGs must not become inputs

    for _ in range(2):
        status, err = run(folder, "--out", out, "--model", tiny_model, "--batch-size", 2)
        assert status == EXIT_SOME_FAILED, err
        records = read_results(out)
        assert set(records) == {"cat.jpg", "coffee.jpg", "astronaut.webp", *bad}
    for name, phrase in bad.items():
        assert phrase in records[name]["error"] and name in records[name]["error"]
        assert set(records[name]) == {"path", "error", "time_s"}
    for name in ("cat.jpg", "coffee.jpg", "astronaut.webp"):
        check_ok(out, records[name], k=2)
    error_lines = [line for line in err.splitlines() if line.startswith("gradcam-fast: ")]
    error_lines = [line for line in error_lines if any(n in line for n in bad)]
    assert len(error_lines) == len(bad)
    assert "Traceback" not in err
    assert "3 image(s) explained, 4 failed" in err
    linked = gallery_links(out)
    assert {f for r in records.values() for f in r.get("outputs", [])} <= set(linked)


def test_converted_inputs_and_full_image_overlays(run, tiny_model, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photo = load_image(SAMPLES / "cat.jpg").resize((60, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees: 40 wide, 60 tall
    photo.save(folder / "rotated.jpg", exif=exif)
    photo.convert("L").save(folder / "gray.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257).save(folder / "gray16.png")
    status, err = run(
        folder, "--out", tmp_path / "out", "--model", tiny_model, "--full-image", "-q"
    )
    assert status == EXIT_OK, err
    records = read_results(tmp_path / "out")
    assert len(records) == 5
    for name, record in records.items():
        size = (40, 60) if name == "rotated.jpg" else (60, 40)
        check_ok(tmp_path / "out", record, k=2, size=size)
    assert err == ""  # -q: no progress bar, no summary


def test_missing_file_among_good_ones_fails_only_itself(run, tiny_model, tmp_path):
    status, err = run(
        SAMPLES / "cat.jpg", tmp_path / "nope.jpg", "--out", tmp_path, "--model", tiny_model
    )
    assert status == EXIT_SOME_FAILED
    records = read_results(tmp_path)
    assert "no such file" in records["nope.jpg"]["error"] and "nope.jpg" in err
    check_ok(tmp_path, records["cat.jpg"], k=2)


# --------------------------------------------------------------------------- classes and maps


def test_classes_by_name_and_index_with_saved_maps(run, tiny_model, tmp_path):
    status, err = run(
        SAMPLES / "cat.jpg",
        SAMPLES / "rocket.jpg",
        "--out",
        tmp_path,
        "--model",
        tiny_model,
        "--class",
        "Tiger_Cat",
        "--class",
        "6",
        "--save-maps",
        "-q",
    )
    assert status == EXIT_OK, err
    records = read_results(tmp_path)
    session = GradCAMSession(tiny_model, device="cpu")
    for name, record in records.items():
        check_ok(tmp_path, record, k=2)
        assert record["explained"] == [1, 6]
        assert record["outputs"] == [
            f"{Path(name).stem}_1_tiger-cat.png",
            f"{Path(name).stem}_1_tiger-cat.npy",
            f"{Path(name).stem}_6_missile.png",
            f"{Path(name).stem}_6_missile.npy",
        ]
        # the saved maps are the session's maps of the torchvision-preprocessed image
        meta = session.metadata
        x = preprocess(load_image(SAMPLES / name), SIZE, meta.mean, meta.std)
        expected = session(x[None], [[1, 6]]).cams[0].numpy()
        for k, file in enumerate(record["outputs"][1::2]):
            saved = np.load(tmp_path / file)
            assert saved.dtype == np.float32 and saved.shape == (SIZE, SIZE)
            np.testing.assert_allclose(saved, expected[k], atol=1e-6)


@pytest.mark.parametrize("method", ["layercam", "gradcam++"])
def test_method_option_saves_that_methods_maps(run, tiny_model, tmp_path, method):
    status, err = run(SAMPLES / "coffee.jpg", "--out", tmp_path, "--model", tiny_model,
                      "--class", "3", "--method", method, "--save-maps", "-q")  # fmt: skip
    assert status == EXIT_OK, err
    record = read_results(tmp_path)["coffee.jpg"]
    session = GradCAMSession(tiny_model, device="cpu")
    meta = session.metadata
    x = preprocess(load_image(SAMPLES / "coffee.jpg"), SIZE, meta.mean, meta.std)
    expected = session(x[None], [[3, 3]], method=method).cams[0, 0].numpy()
    other = session(x[None], [[3, 3]]).cams[0, 0].numpy()
    saved = np.load(tmp_path / record["outputs"][1])
    np.testing.assert_allclose(saved, expected, atol=1e-6)
    assert not np.allclose(saved, other, atol=1e-3)  # really another method's map


def test_overlay_is_drawn_on_what_the_model_saw(run, tiny_model, tmp_path):
    image = load_image(SAMPLES / "rocket.jpg")
    for crop in (True, False):
        out = tmp_path / str(crop)
        options = ["--alpha", "0", "--save-maps", "-q"] + ([] if crop else ["--no-crop"])
        status, err = run(SAMPLES / "rocket.jpg", "--out", out, "--model", tiny_model, *options)
        assert status == EXIT_OK, err
        record = read_results(out)["rocket.jpg"]
        with Image.open(out / record["outputs"][0]) as png:  # alpha 0: the bare model view
            np.testing.assert_array_equal(np.asarray(png), model_view(image, SIZE, crop))
        session = GradCAMSession(tiny_model, device="cpu")
        meta = session.metadata
        x = preprocess(image, SIZE, meta.mean, meta.std, crop=crop)
        expected = session(x[None]).cams[0, 0].numpy()
        np.testing.assert_allclose(np.load(out / record["outputs"][1]), expected, atol=1e-6)


# Another weights' preprocessing (ResNet-50's 232/224 with EfficientNet's bicubic filter): at
# S = 32 the shorter side goes to 33 instead of VGG's 37.
OTHER_WEIGHTS = {"resize_size": 232, "crop_size": 224, "interpolation": "bicubic"}


@pytest.fixture(scope="module")
def other_weights_model(tmp_path_factory) -> Path:
    """The tiny VGG exported with OTHER_WEIGHTS' preprocessing in its ModelInfo."""
    model = make_tiny_vgg(num_classes=len(NAMES), pool=7)
    model.gradcam_fast_info = ModelInfo(
        arch="vgg", weights="random:tiny", categories=NAMES, **OTHER_WEIGHTS
    )
    path = tmp_path_factory.mktemp("other") / "other.onnx"
    return export_onnx(model, path, image_size=SIZE, num_targets=2)


def test_images_are_preprocessed_as_the_models_metadata_says(run, other_weights_model, tmp_path):
    """End to end: the export records the weights' preprocessing, and explain resizes (shorter
    side 33, bicubic), crops and maps overlays back the way the metadata says, not VGG's way."""
    session = GradCAMSession(other_weights_model, device="cpu")
    meta = session.metadata
    assert preprocessing_of(meta) == OTHER_WEIGHTS
    image = load_image(SAMPLES / "rocket.jpg")
    status, err = run(SAMPLES / "rocket.jpg", "--out", tmp_path / "view", "--model",
                      other_weights_model, "--alpha", "0", "--save-maps", "-q")  # fmt: skip
    assert status == EXIT_OK, err
    record = read_results(tmp_path / "view")["rocket.jpg"]
    with Image.open(tmp_path / "view" / record["outputs"][0]) as png:  # alpha 0: the view
        view = np.asarray(png)
    np.testing.assert_array_equal(view, model_view(image, SIZE, **OTHER_WEIGHTS))
    assert (view != model_view(image, SIZE)).mean() > 0.5  # VGG's 256/224 would be another view
    x = preprocess(image, SIZE, meta.mean, meta.std, **OTHER_WEIGHTS)
    cam = np.load(tmp_path / "view" / record["outputs"][1])
    np.testing.assert_allclose(cam, session(x[None]).cams[0, 0].numpy(), atol=1e-6)

    status, err = run(SAMPLES / "rocket.jpg", "--out", tmp_path / "full", "--model",
                      other_weights_model, "--full-image", "-q")  # fmt: skip
    assert status == EXIT_OK, err
    with Image.open(
        tmp_path / "full" / read_results(tmp_path / "full")["rocket.jpg"]["outputs"][0]
    ) as png:
        full = np.asarray(png)
    crop = model_crop(image.width, image.height, SIZE, **OTHER_WEIGHTS)
    assert decode(SAMPLES / "rocket.jpg", meta).crop == crop
    np.testing.assert_array_equal(full, overlay(np.asarray(image), cam_to_image(cam, crop)))
    vgg_crop = model_crop(image.width, image.height, SIZE)
    assert not np.array_equal(full, overlay(np.asarray(image), cam_to_image(cam, vgg_crop)))


def test_preprocessing_metadata_no_image_can_follow_is_refused_at_start(run, tiny_model, tmp_path):
    proto = onnx.load(tiny_model)
    for prop in proto.metadata_props:
        if prop.key == "gradcam_fast.interpolation":
            prop.value = '"lanczos"'
    onnx.save(proto, tmp_path / "lanczos.onnx")
    status, err = run(SAMPLES / "cat.jpg", "--out", tmp_path / "out", "--model",
                      tmp_path / "lanczos.onnx", "-q")  # fmt: skip
    assert status == EXIT_ERROR
    assert "interpolation must be one of ['bicubic', 'bilinear'], got 'lanczos'" in err
    assert err.count("lanczos") == 1  # one error at start, not one per image
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_top_k_explains_the_k_best_classes(run, tiny_model, tmp_path):
    for k in (2, 1):  # a K = 2 model serves one map per image too
        out = tmp_path / str(k)
        status, err = run(
            SAMPLES / "astronaut.jpg", "--out", out, "--model", tiny_model, "--top-k", k
        )
        assert status == EXIT_OK, err
        record = read_results(out)["astronaut.jpg"]
        check_ok(out, record, k=k)
        assert record["explained"] == [p["index"] for p in record["predictions"][:k]]
        assert "images/s" in err  # the summary line
    status, err = run(
        SAMPLES / "cat.jpg", "--out", tmp_path / "c", "--model", tiny_model, "--class", "mask"
    )
    assert status == EXIT_OK, err
    record = read_results(tmp_path / "c")["cat.jpg"]
    assert record["explained"] == [7] and record["outputs"] == ["cat_7_mask.png"]


def test_workers_and_batches_do_not_change_results(run, tiny_model, tmp_path):
    images = sorted(SAMPLES.glob("*.jpg"))
    outs = {}
    for name, options in {
        "serial": ["--workers", 0],
        "overlap": ["--workers", 2, "--batch-size", 3],
    }.items():
        status, err = run(
            *images, "--out", tmp_path / name, "--model", tiny_model, "--save-maps", *options
        )
        assert status == EXIT_OK, err
        outs[name] = read_results(tmp_path / name)
    assert list(outs["serial"]) == [p.name for p in images]  # input order
    for name in outs["serial"]:
        a, b = outs["serial"][name], outs["overlap"][name]
        assert a["predictions"] == b["predictions"] and a["outputs"] == b["outputs"]
        for file in a["outputs"][1::2]:
            np.testing.assert_allclose(
                np.load(tmp_path / "serial" / file), np.load(tmp_path / "overlap" / file), atol=1e-6
            )


def test_resolve_classes():
    assert resolve_classes(["tabby", "  persian   CAT ", "9"], NAMES, 10) == [0, 2, 9]
    with pytest.raises(ValueError, match=r"close matches: 'tabby' \(0\)"):
        resolve_classes(["taby"], NAMES, 10)
    with pytest.raises(ValueError, match=r"'tiger cat' \(1\).*'persian cat' \(2\)"):
        resolve_classes(["cat"], NAMES, 10)
    with pytest.raises(ValueError, match="given twice"):
        resolve_classes(["tabby", "0"], NAMES, 10)
    with pytest.raises(ValueError, match=r"out of range.*0\.\.9"):
        resolve_classes(["10"], NAMES, 10)
    with pytest.raises(ValueError, match="no class names"):
        resolve_classes(["tabby"], (), 10)
    with pytest.raises(ValueError, match="several classes"):
        resolve_classes(["crane"], ("crane", "x", "crane"), 3)


def test_collect_inputs_globs_folders_and_missing(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.jpg", "a/2.PNG", "a/3.txt", "b.jpg"):
        (tmp_path / name).write_bytes(b"x")
    found = collect_inputs(
        [
            str(tmp_path / "a"),
            str(tmp_path / "*.jpg"),
            str(tmp_path / "a" / "1.jpg"),
            str(tmp_path / "z*.png"),
        ]
    )
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/1.jpg",
        "a/2.PNG",
        "b.jpg",
        "z*.png",
    ]


# --------------------------------------------------------------------------- exit status 2


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--class", "tabbby"], "close matches: 'tabby'"),
        (["--class", "tabby", "--top-k", "2"], "either --class or --top-k"),
        (["--top-k", "3"], "-k 3"),
        (["--colormap", "nope"], "unknown colormap"),
    ],
)
def test_usage_errors_exit_2_with_one_line(run, tiny_model, tmp_path, options, message):
    status, err = run(
        SAMPLES / "cat.jpg", "--out", tmp_path / "out", "--model", tiny_model, *options
    )
    assert status == EXIT_ERROR
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_no_images_or_no_model_exit_2(run, tmp_path):
    status, err = run(tmp_path, "--out", tmp_path / "out", "--model", tmp_path / "missing.onnx")
    assert status == EXIT_ERROR and "no image files found" in err
    status, err = run(
        SAMPLES / "cat.jpg", "--out", tmp_path / "out", "--model", tmp_path / "missing.onnx"
    )
    assert status == EXIT_ERROR and "no model file" in err and "Traceback" not in err
