"""examples/node/explain.mjs, the Node.js program that runs a maps model with onnxruntime-node:
its maps equal the Python session's, its pixels equal gradcam_fast's preprocessing, and bad input
gives one line and exit code 1. Skips where `node` or the example's node_modules are absent
(CI installs them: see .ci/run)."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnx
import PIL
import pytest
import torch
from PIL import Image
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx, load_model
from gradcam_fast.check.compare import relative_error
from gradcam_fast.format.preprocessing import normalize_pixels
from gradcam_fast.io.images import load_image, model_view

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "node"
NODE = shutil.which("node")
S, K = 32, 2
# Another weights' preprocessing: at S = 32 the shorter side goes to 33 (VGG's: 37), bicubic.
OTHER_WEIGHTS = {"resize_size": 232, "crop_size": 224, "interpolation": "bicubic"}
PREPROCESSING_KEYS = ("resize_size", "crop_size", "interpolation")
# The example follows Pillow 13's order of the two resampling passes (image.mjs).
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13

pytestmark = [
    pytest.mark.skipif(NODE is None, reason="node is not installed (Node.js 20+ runs the example)"),
    pytest.mark.skipif(
        not (EXAMPLE / "node_modules" / "onnxruntime-node").is_dir(),
        reason="examples/node/node_modules is absent: run `(cd examples/node && "
        "ONNXRUNTIME_NODE_INSTALL=skip npm ci)`",
    ),
]


def _set_props(proto: onnx.ModelProto, values: dict[str, str]) -> None:
    """Set metadata_props entries of `proto` (replacing those of the same key)."""
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        proto.metadata_props.add(key=key, value=value)


def run_node(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NODE, str(EXAMPLE / "explain.mjs"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vgg(batch_norm=True, seed=5)


@pytest.fixture(scope="module")
def models(tiny, tmp_path_factory):
    """raw-pixel and float maps models, plus two files the program must refuse."""
    folder = tmp_path_factory.mktemp("node_models")
    raw = export_onnx(
        tiny, folder / "raw.onnx", image_size=S, num_targets=K, maps=True, raw_pixels=True,
        validate=False,
    )  # fmt: skip
    flt = export_onnx(tiny, folder / "float.onnx", image_size=S, num_targets=K, maps=True)
    raw_proto = onnx.load(raw)
    _set_props(raw_proto, {f"gradcam_fast.{k}": json.dumps(v) for k, v in OTHER_WEIGHTS.items()})
    onnx.save(raw_proto, folder / "other_weights.onnx")
    _set_props(raw_proto, {"gradcam_fast.interpolation": '"lanczos"'})
    onnx.save(raw_proto, folder / "lanczos.onnx")
    kept = [p for p in raw_proto.metadata_props if not p.key.endswith(PREPROCESSING_KEYS)]
    del raw_proto.metadata_props[:]
    raw_proto.metadata_props.extend(kept)
    onnx.save(raw_proto, folder / "before_fields.onnx")
    proto = onnx.load(flt)
    for prop in proto.metadata_props:
        if prop.key == "gradcam_fast.maps":
            prop.value = "false"
    onnx.save(proto, folder / "no_maps.onnx")
    del proto.metadata_props[:]
    onnx.save(proto, folder / "foreign.onnx")
    return {
        "raw": raw,
        "float": flt,
        "no_maps": folder / "no_maps.onnx",
        "foreign": folder / "foreign.onnx",
        "other_weights": folder / "other_weights.onnx",
        "lanczos": folder / "lanczos.onnx",
        "before_fields": folder / "before_fields.onnx",
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """An S x S RGB PNG, a larger non-square RGBA PNG (resize, crop and alpha), a JPEG."""
    folder = tmp_path_factory.mktemp("node_images")
    rng = np.random.default_rng(0)
    square = folder / "square.png"
    Image.fromarray(rng.integers(0, 256, (S, S, 3), dtype=np.uint8)).save(square)
    wide = folder / "wide.png"
    rgba = rng.integers(0, 256, (45, 71, 4), dtype=np.uint8)
    rgba[:10, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(wide)
    photo = folder / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(photo, quality=90)
    return {"square": square, "wide": wide, "photo": photo}


def _dump(out: Path, stem: str) -> dict:
    return json.loads((out / f"{stem}.maps.json").read_text())


def _check_maps(dump: dict, session: GradCAMSession, x: torch.Tensor) -> None:
    """The Node program's maps against the Python session on the same input."""
    want = session(x, torch.tensor([[-1, -2]]))
    cams = torch.tensor(dump["cams"]).reshape(dump["cams_shape"])
    lowres = torch.tensor(dump["cams_lowres"]).reshape(dump["cams_lowres_shape"])
    size = session.metadata.image_size
    assert cams.shape == want.cams.shape == (1, K, size, size)
    assert dump["target_classes"] == want.target_classes[0].tolist()
    assert (cams - want.cams).abs().max() <= 1e-4  # cams are in [0, 1]
    assert relative_error(lowres, want.cams_lowres) <= 1e-4
    assert relative_error(torch.tensor(dump["logits"]), want.logits[0]) <= 1e-4
    assert want.cams.amax() == 1 and want.cams_lowres.amax() > 0  # real maps, not all zero


def test_node_maps_equal_python_raw_pixels(models, images, tmp_path):
    out = tmp_path / "out"
    done = run_node("--model", models["raw"], "--out", out, "--dump-maps", *images.values())
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["image"] for r in records] == [str(p) for p in images.values()]
    session = GradCAMSession(models["raw"], device="cpu")
    for stem, path in images.items():
        dump = _dump(out, stem)
        pixels = np.array(dump["pixels"], dtype=np.uint8).reshape(S, S, 3)
        if path.suffix == ".png":  # decoding, alpha on white, resize 256/224 S, crop: exact
            assert np.array_equal(pixels, model_view(load_image(path), S))
        _check_maps(dump, session, torch.from_numpy(pixels).unsqueeze(0))
    record = records[0]
    assert record["method"] == "gradcam" and len(record["top"]) == 5
    assert record["top"][0]["probability"] >= record["top"][1]["probability"]
    assert [e["class"] for e in record["explained"]] == _dump(out, "square")["target_classes"]
    for file in record["overlays"]:
        assert Image.open(file).size == (S, S)


@pytest.mark.slow
def test_node_maps_equal_python_for_a_resnet(images, tmp_path):
    """A non-VGG network (ResNet-18: residual adds, BatchNorm, global pooling) in the maps
    model, raw pixels in: the Node program's maps equal the Python session's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model("resnet18", "random", seed=2)
    size = 64
    path = export_onnx(
        model, tmp_path / "resnet18.onnx", image_size=size, num_targets=K, maps=True,
        raw_pixels=True,
    )  # fmt: skip
    out = tmp_path / "out"
    done = run_node("--model", path, "--out", out, "--dump-maps", images["square"], images["wide"])
    assert done.returncode == 0, done.stderr
    session = GradCAMSession(path, device="cpu")
    assert session.metadata.arch == "resnet18"
    for stem in ("square", "wide"):
        dump = _dump(out, stem)
        pixels = np.array(dump["pixels"], dtype=np.uint8).reshape(size, size, 3)
        _check_maps(dump, session, torch.from_numpy(pixels).unsqueeze(0))


def test_node_maps_equal_python_float_input(models, images, tmp_path):
    """A float model: the program normalizes with the metadata's mean/std, as torch does."""
    out = tmp_path / "out"
    done = run_node(
        "--model", models["float"], "--out", out, "--dump-maps", "--full-image", images["wide"]
    )
    assert done.returncode == 0, done.stderr
    dump = _dump(out, "wide")
    pixels = np.array(dump["pixels"], dtype=np.uint8).reshape(1, S, S, 3)
    assert np.array_equal(pixels[0], model_view(load_image(images["wide"]), S, crop=False))
    session = GradCAMSession(models["float"], device="cpu")
    meta = session.metadata
    _check_maps(dump, session, normalize_pixels(torch.from_numpy(pixels), meta.mean, meta.std))


def test_node_bad_images_one_line_each_others_processed(models, images, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    done = run_node(
        "--model", models["raw"], "--out", tmp_path / "out", missing, images["square"], text
    )
    assert done.returncode == 1
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2
    assert str(missing) in errors[0] and "no such file" in errors[0]
    assert str(text) in errors[1] and "not a PNG or JPEG" in errors[1]
    assert [json.loads(line)["image"] for line in done.stdout.splitlines()] == [
        str(images["square"])
    ]


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ("no_maps", "exported without maps"),
        ("foreign", "not a gradcam_fast model"),
        ("missing", "cannot open the model"),
        ("not_onnx", "not a readable ONNX model"),
        ("lanczos", 'asks for "lanczos" interpolation'),
    ],
)
def test_node_refuses_models(models, images, tmp_path, model, problem):
    (tmp_path / "not_onnx.onnx").write_bytes(b"\x0f\xff\xff garbage")
    path = models.get(model, tmp_path / f"{model}.onnx")
    done = run_node("--model", path, "--out", tmp_path / "out", images["square"])
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and problem in lines[0] and str(path) in lines[0]
    assert done.stdout == ""


def test_node_targets_follow_the_session_semantics(models, images, tmp_path):
    """--targets: a class index or -r (the r-th highest logit), K of them."""
    done = run_node("--model", models["raw"], "--out", tmp_path, "--targets=3,-1", images["square"])
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert [e["class"] for e in record["explained"]] == [3, record["top"][0]["class"]]
    wrong = run_node("--model", models["raw"], "--out", tmp_path, "--targets=3", images["square"])
    assert wrong.returncode == 1 and "needs 2 integers" in wrong.stderr


def test_node_resizes_as_the_models_preprocessing_metadata_says(models, images, tmp_path):
    """resize_size/crop_size/interpolation from the metadata: bicubic 232/224 gives Python's
    pixels exactly (PNG), a tall image included (Pillow 13 resamples it vertically first); a
    file exported before the fields existed gets VGG's 256/224 bilinear."""
    tall = tmp_path / "tall.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (200, 40, 3), dtype=np.uint8)).save(tall)
    pngs = [images["square"], images["wide"], tall]
    session = GradCAMSession(models["other_weights"], device="cpu")
    assert session.metadata.interpolation == "bicubic"
    for full_image in (False, True):
        out = tmp_path / f"out{full_image}"
        flags = ["--full-image"] if full_image else []
        done = run_node("--model", models["other_weights"], "--out", out, "--dump-maps", *flags,
                        *pngs)  # fmt: skip
        assert done.returncode == 0, done.stderr
        for path in pngs:
            dump = _dump(out, path.stem)
            pixels = np.array(dump["pixels"], dtype=np.uint8).reshape(S, S, 3)
            image = load_image(path)
            want = model_view(image, S, not full_image, **OTHER_WEIGHTS)
            if PILLOW_13 or path != tall:
                assert np.array_equal(pixels, want), path.name
            else:  # Pillow 12 resamples tall images horizontally first: a level apart at most
                assert np.abs(pixels.astype(int) - want).max() <= 1
            if image.size != (S, S) or not full_image:  # an S x S image is not resized then
                vgg = model_view(image, S, not full_image)
                assert not np.array_equal(pixels, vgg)  # not VGG's 256/224 bilinear
            _check_maps(dump, session, torch.from_numpy(pixels).unsqueeze(0))
    out = tmp_path / "before_fields"
    done = run_node("--model", models["before_fields"], "--out", out, "--dump-maps", tall)
    assert done.returncode == 0, done.stderr
    pixels = np.array(_dump(out, "tall")["pixels"], dtype=np.uint8).reshape(S, S, 3)
    want = model_view(load_image(tall), S).astype(int)
    assert np.abs(pixels.astype(int) - want).max() <= (0 if PILLOW_13 else 1)
