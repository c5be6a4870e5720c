"""Checks that cannot be fooled (issue 11): non-finite outputs fail every comparison, a model is
published only after it validated, two processes share one cache, and non-finite maps at run
time are an error naming the images, never a plausible-looking map."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx
from gradcam_fast.app.model_cache import cached_model
from gradcam_fast.check.compare import compare_with_reference, failing_figures, relative_error
from gradcam_fast.check.finite import NonFiniteMapsError
from gradcam_fast.export.validate import ExportValidationError
from gradcam_fast.format.inputs import nonfinite_rows

SIZE = 32
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vgg(seed=4)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(tiny, images):
    return eager_gradcam(tiny, images, torch.tensor([[-1], [2], [5]]))


def poisoned(result, name: str, value: float, where=(0,)):
    """A copy of `result` with `value` written into one element of output `name`."""
    tensor = getattr(result, name).clone()
    tensor[where] = value
    return dataclasses.replace(result, **{name: tensor})


def nan_model(seed: int = 4, layer: str = "classifier.6.weight", value: float = math.nan):
    model = make_tiny_vgg(seed=seed)
    with torch.no_grad():
        model.get_parameter(layer).view(-1)[0] = value
    return model


# --------------------------------------------------------------------------- 1. comparisons


def test_relative_error_is_inf_for_nan_or_inf():
    ref = torch.ones(4)
    assert relative_error(torch.full((4,), math.nan), ref) == math.inf
    assert relative_error(torch.tensor([1.0, math.inf, 1, 1]), ref) == math.inf
    assert relative_error(ref, torch.tensor([1.0, -math.inf, 1, 1])) == math.inf
    assert relative_error(ref * 1.5, ref) == 0.5  # finite inputs: the usual figure


@pytest.mark.parametrize(
    ("output", "where"),
    [
        ("logits", (1, 3)),
        ("activations", (0, 2, 1, 1)),
        ("cams_lowres", (2, 0, 0, 0)),
        ("gradients", (0, 0, 5, 1, 1)),
    ],
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_one_nonfinite_element_fails_naming_the_output(reference, output, where, value, precision):
    errors = compare_with_reference(poisoned(reference, output, value, where), reference)
    failed = failing_figures(errors, precision)
    assert f"{output}_nonfinite" in failed and errors[f"{output}_nonfinite"] == 1
    assert errors[output] == math.inf


def test_an_all_nan_result_with_the_right_classes_fails(reference):
    """The issue's case: every output NaN, the classes right; each output is named, with its
    count, also at float16's looser limits (which do not judge weights and gradients)."""
    nan = {
        k: torch.full_like(v, math.nan) if v.is_floating_point() else v
        for k, v in vars(reference).items()
        if v is not None
    }
    got = dataclasses.replace(reference, **nan)
    errors = compare_with_reference(got, reference)
    for precision in ("float32", "float16"):
        failed = failing_figures(errors, precision)
        for name in ("logits", "activations", "cams_lowres", "weights", "gradients"):
            assert f"{name}_nonfinite" in failed, (precision, name)
    assert errors["logits_nonfinite"] == reference.logits.numel()
    assert errors["gradients_nonfinite"] == reference.gradients.numel()


def test_a_nonfinite_reference_fails_too(reference):
    errors = compare_with_reference(reference, poisoned(reference, "logits", math.nan))
    assert "logits_nonfinite" in failing_figures(errors)


def test_nan_figures_fail(reference):
    """A figure that is NaN (however it came about) is beyond every limit."""
    errors = compare_with_reference(reference, reference)
    assert failing_figures(errors) == []
    errors["cams_lowres"] = math.nan
    assert failing_figures(errors) == ["cams_lowres"]


@pytest.mark.parametrize(
    ("layer", "value", "outputs", "external_data"),
    [
        ("classifier.6.weight", math.nan, "logits: 3 elements", False),  # one class's logits
        ("features.0.weight", math.inf, "activations", True),
    ],
)
def test_export_refuses_nonfinite_weights_and_leaves_nothing(
    tmp_path, layer, value, outputs, external_data
):
    path = tmp_path / "models" / "bad.onnx"
    with pytest.raises(ExportValidationError, match="the outputs are not finite") as info:
        export_onnx(
            nan_model(layer=layer, value=value), path, image_size=SIZE, external_data=external_data
        )
    assert outputs in str(info.value) and str(path) in str(info.value)
    assert list(path.parent.iterdir()) == []  # no model, no weights file, no temporary folder


# --------------------------------------------------------------------------- 2. publication


@pytest.mark.slow
def test_interrupted_validation_leaves_nothing_and_keeps_an_earlier_model(tmp_path, monkeypatch):
    path = tmp_path / "m.onnx"
    good = export_onnx(make_tiny_vgg(seed=1), path, image_size=SIZE, validate=False)
    before = good.read_bytes()

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gradcam_fast.export.onnx_export.validate_onnx", interrupt)
    with pytest.raises(KeyboardInterrupt):  # over the earlier model, with a weights file
        export_onnx(make_tiny_vgg(seed=2), path, image_size=SIZE, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    assert path.read_bytes() == before  # the earlier model, untouched
    with pytest.raises(KeyboardInterrupt):  # at a new path
        export_onnx(make_tiny_vgg(), tmp_path / "new.onnx", image_size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.slow
def test_external_data_model_validates_before_it_is_published(tmp_path, images):
    """The model references its weights file by the final name; validation ran on the copy in
    the temporary folder, and the published pair works from its place."""
    import onnx

    tiny = make_tiny_vgg(seed=6)
    path = export_onnx(tiny, tmp_path / "ext.onnx", image_size=SIZE, external_data=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    proto = onnx.load(path, load_external_data=False)
    locations = {
        entry.value
        for tensor in proto.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"ext.onnx.data"}
    got = GradCAMSession(path, "cpu")(images, [[-1], [2], [5]])
    errors = compare_with_reference(got, eager_gradcam(tiny, images, [[-1], [2], [5]]))
    assert failing_figures(errors) == [], errors
    # exported again without external data: the stale weights file goes
    export_onnx(tiny, path, image_size=SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx"]


@pytest.mark.slow
def test_the_cache_never_keeps_a_refused_model(tmp_path, monkeypatch):
    """A model refused at export is not left in the cache, so the next call exports (and
    refuses) again instead of reusing it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(cache))
    loads = []

    def load(arch, weights, seed=0):
        loads.append(arch)
        return nan_model()

    monkeypatch.setattr("gradcam_fast.export.onnx_export.load_model", load)
    for attempt in (1, 2):
        with pytest.raises(ExportValidationError, match="not finite"):
            cached_model("vgg11", "random", image_size=SIZE)
        assert len(loads) == attempt
        assert [p.name for p in cache.iterdir() if p.name != ".export.lock"] == []


# --------------------------------------------------------------------------- 3. one cache, two processes

_PROCESS = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
import torch
from tiny_models import make_tiny_vgg
import onnx
import gradcam_fast.export.onnx_export
gradcam_fast.export.onnx_export.load_model = lambda arch, weights, seed=0: make_tiny_vgg(seed=seed)
save = onnx.save
def slow_save(*args, **kwargs):  # writing VGG's 500 MB takes seconds: a race window as wide
    save(*args, **kwargs)
    time.sleep(3)
onnx.save = slow_save
from gradcam_fast.cli import main

barrier = Path({barrier!r})
(barrier / sys.argv[1]).touch()
deadline = time.monotonic() + 120
while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
sys.exit(main(["explain", {image!r}, "--out", sys.argv[2], "--arch", "vgg11",
               "--weights", "random", "--image-size", "{size}", "--save-maps", "-q"]))
"""


@pytest.mark.slow
def test_two_processes_export_into_one_cache(tmp_path):
    """Two `explain` runs started together on an empty cache: both succeed with the same maps
    and leave one model and no temporary files (the export runs once, under the cache's lock).
    A tiny VGG stands in for vgg11, and a 3 s pause after each model write stands in for the
    seconds VGG's weights take to write (the window in which the two exports collided)."""
    cache, barrier = tmp_path / "cache", tmp_path / "barrier"
    barrier.mkdir()
    code = _PROCESS.format(
        tests=str(ROOT / "tests"),
        barrier=str(barrier),
        image=str(ROOT / "examples" / "images" / "cat.jpg"),
        size=SIZE,
    )
    env = {**os.environ, "GRADCAM_FAST_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, name, str(tmp_path / name)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    assert sorted(p.name for p in cache.iterdir()) == [
        ".export.lock",
        f"vgg11-random0-default-{SIZE}-k1-cw.onnx",
    ]
    records = [json.loads((tmp_path / name / "results.jsonl").read_text()) for name in ("a", "b")]
    assert records[0]["predictions"] == records[1]["predictions"]
    a, b = (np.load(tmp_path / name / records[0]["outputs"][1]) for name in ("a", "b"))
    np.testing.assert_array_equal(a, b)
    session = GradCAMSession(next(cache.glob("*.onnx")), "cpu")
    assert session.metadata.gradients is False and session.metadata.image_size == SIZE


# --------------------------------------------------------------------------- 4. at run time


class _Poisoning:
    """Wraps a session's runner: the outputs of images whose mean exceeds `threshold` get
    `value` written into output `index` (0 logits, 2 activations, 3 gradients)."""

    def __init__(self, runner, index: int, value: float = math.nan, threshold: float = 50.0):
        self.runner, self.index, self.value, self.threshold = runner, index, value, threshold
        self.batches: list[int] = []

    def __call__(self, images, targets):
        outputs = list(self.runner(images, targets))
        self.batches.append(images.shape[0])
        hit = images.mean(dim=(1, 2, 3)) > self.threshold
        tensor = outputs[self.index].clone()
        tensor.view(tensor.shape[0], -1)[hit, 0] = self.value
        outputs[self.index] = tensor
        return tuple(outputs)


@pytest.fixture
def session(tiny):
    return GradCAMSession.from_model(tiny, image_size=SIZE, device="cpu")


@pytest.mark.parametrize(
    ("index", "value"),
    [(0, math.nan), (2, math.nan), (2, math.inf), (3, -math.inf)],
    ids=["nan-logits", "nan-activations", "inf-activations", "inf-gradients"],
)
@pytest.mark.parametrize("max_batch_size", [None, 2])
def test_nonfinite_outputs_raise_naming_the_images(session, images, index, value, max_batch_size):
    """A NaN only in the logits leaves plausible maps; an infinity before the ReLU can give a
    map of zeros: both are refused, naming the images; the result carried by the error keeps
    the others' maps and NaN for those."""
    clean = session(images)
    session.max_batch_size = max_batch_size
    session._runner = _Poisoning(session._runner, index, value)
    x = images.clone()
    x[1] += 100.0  # image 1 is the one poisoned
    x[2] += 100.0
    with pytest.raises(NonFiniteMapsError, match=r"2 of 4 images .*batch indices 1, 3") as info:
        session(torch.cat([images[:1], x[1:2], images[2:3], x[2:3]]))
    err = info.value
    assert err.indices == [1, 3]
    assert torch.isnan(err.result.cams[[1, 3]]).all()
    assert torch.isnan(err.result.cams_lowres[[1, 3]]).all()
    torch.testing.assert_close(err.result.cams[[0, 2]], clean.cams[[0, 2]])
    assert torch.isfinite(session(images).cams).all()  # the clean images alone: no error


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_nonfinite_rows_finds_every_nonfinite_row_and_no_finite_one(dtype):
    """The fast check sums rows: a NaN, +inf, -inf, or +inf and -inf in one row are all
    found, in any of the tensors; rows of the dtype's largest finite values, whose sum
    overflows (except float16's, summed in float32), are tested element by element and not
    flagged."""
    big = torch.finfo(dtype).max
    a = torch.ones(6, 3, 4, 4, dtype=dtype)
    b = torch.ones(6, 10, dtype=dtype)
    a[0, 1, 2, 3] = math.nan
    a[1, 0, 0, 0] = math.inf
    b[2, 5] = -math.inf
    a[3, 0, 0, 0], a[3, 2, 1, 1] = math.inf, -math.inf  # their sum is NaN: found too
    a[4] = big  # finite; 48 of the largest values overflow a float32 (or float64) sum
    b[5] = big
    found = nonfinite_rows(a, b)
    assert found.dtype == torch.bool
    assert found.tolist() == [True, True, True, True, False, False]
    assert not nonfinite_rows(a[4:], b[4:]).any()  # only overflowing rows: the exact check
    assert not nonfinite_rows(torch.zeros(2, 0)).any()  # empty rows are finite


def test_aug_smooth_names_the_original_image(session, images):
    """One augmented copy (the 1.1 intensity factor) of image 2 overflows: the error names
    image 2 of the caller's batch, not a copy's position in the augmented batch."""
    x = images.clone()
    x[2] = 100.0  # mean 100: only the copies scaled by 1.1 exceed the threshold of 105
    session._runner = _Poisoning(session._runner, 2, math.inf, threshold=105.0)
    with pytest.raises(NonFiniteMapsError) as info:
        session(x, [[1], [1], [1]], aug_smooth=True)
    assert info.value.indices == [2]
    assert torch.isfinite(info.value.result.cams[:2]).all()


@pytest.fixture(scope="module")
def overflow_model(tmp_path_factory) -> Path:
    """A tiny VGG whose first convolution overflows float32 on bright images (every weight
    1e37: a white image's sums reach inf, then NaN further on) while a black image's sums go to
    -inf, which the ReLU turns into zeros: finite outputs. Exported without validation."""
    model = make_tiny_vgg(seed=3)
    with torch.no_grad():
        model.features[0].weight.fill_(1e37)
        model.features[0].bias.zero_()
    path = tmp_path_factory.mktemp("overflow") / "overflow.onnx"
    return export_onnx(model, path, image_size=SIZE, validate=False)


def _write_plain_images(folder: Path) -> dict[str, Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, level in (("black", 0), ("white", 255)):
        files[name] = folder / f"{name}.png"
        Image.new("RGB", (40, 40), (level,) * 3).save(files[name])
    return files


def test_explain_reports_nonfinite_images_and_explains_the_others(overflow_model, tmp_path, capsys):
    from gradcam_fast.cli import EXIT_SOME_FAILED, main

    files = _write_plain_images(tmp_path / "in")
    out = tmp_path / "out"
    status = main(["explain", str(tmp_path / "in"), "--out", str(out), "--model",
                   str(overflow_model), "-q"])  # fmt: skip
    err = capsys.readouterr().err
    assert status == EXIT_SOME_FAILED
    assert err.splitlines() == [
        f"gradcam-fast: {files['white']}: the model's outputs for this image are not finite "
        "(NaN or Inf), so no map was made (weights holding NaN or Inf, or a float16 overflow; "
        "see docs/reliability.md)"
    ]
    black, white = (json.loads(line) for line in (out / "results.jsonl").read_text().splitlines())
    assert "not finite" in white["error"] and "outputs" not in white
    [png] = black["outputs"]
    assert sorted(p.name for p in out.glob("*.png")) == [png]


def test_ray_predictor_reports_nonfinite_rows(overflow_model, tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow comes with the ray extra")
    from gradcam_fast.services.ray_data import GradCAMPredictor

    files = _write_plain_images(tmp_path)
    predictor = GradCAMPredictor(overflow_model)
    batch = {
        "path": np.array([str(files["black"]), str(files["white"])]),
        "bytes": np.array([files["black"].read_bytes(), files["white"].read_bytes()], object),
    }
    black, white = predictor(batch).to_pylist()
    assert black["error"] is None and np.isfinite(black["cams_lowres"]).all()
    assert "not finite" in white["error"] and str(files["white"]) in white["error"]
    assert white["cams_lowres"] is None and white["predictions"] is None
