"""Raw uint8 NHWC pixels in (export_onnx(raw_pixels=True)): parity with the float path, the
session's checks on such input, and the CLI flag."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from tiny_models import make_tiny_vgg
from torchvision.transforms import functional as TF

from gradcam_fast import GradCAMSession, export_onnx
from gradcam_fast.check.compare import relative_error
from gradcam_fast.export.pixels import RawPixels
from gradcam_fast.export.validate import ExportValidationError, validate_onnx
from gradcam_fast.format.preprocessing import IMAGENET_MEAN, IMAGENET_STD, normalize_pixels

S = 32


def random_pixels(batch: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, S, S, 3), generator=gen).to(torch.uint8)


def test_normalization_is_torchvisions_to_tensor_and_normalize():
    pixels = random_pixels(3)
    pixels[0, 0, 0] = torch.tensor([0, 255, 128], dtype=torch.uint8)
    want = TF.normalize(pixels.permute(0, 3, 1, 2).float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    got = normalize_pixels(pixels, IMAGENET_MEAN, IMAGENET_STD)
    assert got.shape == (3, 3, S, S) and got.dtype == torch.float32
    assert torch.equal(got, want)
    assert torch.equal(RawPixels(IMAGENET_MEAN, IMAGENET_STD)(pixels), want)
    assert got[0, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229)
    assert got[0, 1, 0, 0].item() == pytest.approx((1 - 0.456) / 0.224)
    with pytest.raises(ValueError, match="3 values"):
        RawPixels((0.5,), (0.5,))


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vgg(batch_norm=True, seed=5)


@pytest.fixture(scope="module")
def raw_path(tiny, tmp_path_factory):
    """Exported with validation on, which runs the uint8 path against eager on the float one."""
    path = tmp_path_factory.mktemp("raw") / "tiny_raw.onnx"
    return export_onnx(tiny, path, image_size=S, num_targets=2, raw_pixels=True)


@pytest.fixture(scope="module")
def raw_session(raw_path):
    return GradCAMSession(raw_path, device="cpu")


@pytest.fixture(scope="module")
def float_session(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "tiny_float.onnx"
    return GradCAMSession(
        export_onnx(tiny, path, image_size=S, num_targets=2, validate=False), device="cpu"
    )


def test_raw_model_declares_uint8_nhwc(raw_path, raw_session):
    assert raw_session.metadata.input_format == "uint8_nhwc"
    (images, targets) = onnx.load(raw_path, load_external_data=False).graph.input
    assert images.name == "images"
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = images.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [S, S, 3] and dims[0].dim_param  # dynamic batch
    assert targets.type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_raw_pixels_match_the_float_path(raw_session, float_session):
    assert float_session.metadata.input_format == "float_nchw"
    pixels = random_pixels(4, seed=1)
    targets = torch.tensor([[-1, 3], [-2, 0], [9, -1], [-3, -4]])
    got = raw_session(pixels, targets)
    meta = raw_session.metadata
    want = float_session(normalize_pixels(pixels, meta.mean, meta.std), targets)
    assert torch.equal(got.target_classes, want.target_classes)
    for name in ("logits", "activations", "gradients", "cams_lowres", "cams"):
        assert relative_error(getattr(got, name), getattr(want, name)) < 1e-6, name
    assert want.gradients.abs().max() > 0
    layercam = raw_session(pixels, targets, method="layercam")
    want_lc = float_session(
        normalize_pixels(pixels, meta.mean, meta.std), targets, method="layercam"
    )
    assert relative_error(layercam.cams_lowres, want_lc.cams_lowres) < 1e-6


def test_raw_session_takes_numpy_and_single_images(raw_session):
    pixels = random_pixels(2, seed=2)
    batch = raw_session(pixels.numpy())
    single = raw_session(pixels[1].numpy())
    assert single.cams.shape == (1, 2, S, S)
    torch.testing.assert_close(single.cams_lowres[0], batch.cams_lowres[1])


def test_raw_session_refuses_wrong_input(raw_session, float_session):
    pixels = random_pixels(2)
    with pytest.raises(TypeError, match=r"raw uint8 pixels \[B, S, S, 3\].*got torch.float32"):
        raw_session(pixels.float())
    with pytest.raises(TypeError, match="got float64"):
        raw_session(pixels.numpy().astype(np.float64))
    with pytest.raises(ValueError, match=r"channels first\? use x.permute\(0, 2, 3, 1\)"):
        raw_session(pixels.permute(0, 3, 1, 2).contiguous())
    with pytest.raises(ValueError, match=f"exported for {S}x{S}"):
        raw_session(torch.zeros(1, S + 8, S + 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="empty batch"):
        raw_session(torch.zeros(0, S, S, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match=r"uint8 torch\.Tensor or numpy\.ndarray"):
        raw_session([[0, 1, 2]])
    with pytest.raises(TypeError, match="must be floating point"):  # the float model's own check
        float_session(pixels.permute(0, 3, 1, 2))
    with pytest.raises(ValueError, match="raw_pixels"):  # intensity factors need float input
        raw_session(pixels, aug_smooth=True)


def test_validation_runs_the_raw_path(raw_path, tiny):
    errors = validate_onnx(raw_path, tiny)
    assert max(v for k, v in errors.items() if k != "gradients_beyond_share") < 1e-5
    other = make_tiny_vgg(batch_norm=True, seed=6)
    with pytest.raises(ExportValidationError, match="disagrees with the eager reference"):
        validate_onnx(raw_path, other)


def test_cli_export_passes_raw_pixels(monkeypatch, tmp_path):
    from gradcam_fast import cli
    from gradcam_fast.export import onnx_export

    calls = []
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **kw: calls.append(kw) or a[1])
    out = tmp_path / "m.onnx"
    base = ["export", "-o", str(out), "--arch", "vgg11", "--weights", "random"]
    assert cli.main([*base, "--raw-pixels"]) == 0
    assert cli.main(base) == 0
    assert [c["raw_pixels"] for c in calls] == [True, False]


@pytest.mark.slow
def test_vgg11_raw_export_validates(tmp_path):
    """A named arch: the mean/std baked into the graph are torchvision's for its weights."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(
            "vgg11", tmp_path / "vgg11_raw.onnx", image_size=S, weights="random", raw_pixels=True
        )
    session = GradCAMSession(path, device="cpu")
    assert session.metadata.input_format == "uint8_nhwc"
    assert session.metadata.mean == IMAGENET_MEAN and session.metadata.std == IMAGENET_STD
    result = session(random_pixels(2, seed=3))
    assert result.cams.shape == (2, 1, S, S) and result.gradients.abs().max() > 0
