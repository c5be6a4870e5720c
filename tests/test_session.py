"""The exported ONNX model run by GradCAMSession against the eager reference, and its refusals."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx, load_vgg
from gradcam_fast.check.compare import (
    TOLERANCE,
    compare_with_reference,
    failing_figures,
    relative_error,
)
from gradcam_fast.export.validate import ExportValidationError, validate_onnx
from gradcam_fast.format.metadata import NotAGradCAMModel

FIELDS = ("logits", "activations", "gradients", "cams_lowres")


def assert_session_matches_eager(session, model, images, targets):
    got = session(images, targets)
    ref = eager_gradcam(model, images, targets, session.metadata.target_layer)
    assert torch.equal(got.target_classes, ref.target_classes)
    errors = compare_with_reference(got, ref)
    assert failing_figures(errors) == [], errors
    return got, ref


def near_tie_windows_only(got, ref, rel_gap=1e-5):
    """True when every gradient element beyond tolerance lies in a 2x2 max-pool window whose
    two largest activations differ by less than `rel_gap` (relative): a near-tie that float32
    rounding may break either way. Holds for a target right before the pool."""
    scale = ref.gradients.abs().max()
    bad = ((got.gradients - ref.gradients).abs() > TOLERANCE * scale).nonzero().tolist()
    for b, _, c, h, w in bad:
        window = got.activations[b, c, h // 2 * 2 : h // 2 * 2 + 2, w // 2 * 2 : w // 2 * 2 + 2]
        top2 = window.flatten().topk(2).values
        if float(top2[0] - top2[1]) > rel_gap * float(top2[0].abs()):
            return False
    return True


@pytest.fixture(scope="module")
def session_224(vgg19_onnx_224):
    return GradCAMSession(vgg19_onnx_224, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 8])  # traced at batch 2: each of these is untraced
def test_vgg19_224_matches_eager(session_224, vgg19, batch, rng):
    images = torch.randn(batch, 3, 224, 224, generator=rng)
    targets = torch.tensor([[-1, 17, -600]]).repeat(batch, 1)
    got, ref = assert_session_matches_eager(session_224, vgg19, images, targets)
    assert near_tie_windows_only(got, ref)
    assert got.cams.shape == (batch, 3, 224, 224)
    assert got.cams_lowres.shape == (batch, 3, 14, 14)
    assert float(got.cams.min()) >= 0.0 and float(got.cams.max()) <= 1.0
    assert not torch.isnan(got.cams).any()


@pytest.fixture(scope="module")
def small_exports(vgg19, tmp_path_factory):
    """Layer/size variants of VGG19: odd 5x5 maps with K=2 at an earlier layer, the max-pool
    target, and a layer inside an earlier block."""
    root = tmp_path_factory.mktemp("small")
    specs = {
        "odd": dict(target_layer="features.34", image_size=90, num_targets=2),
        "pool": dict(target_layer="features.36", image_size=64, num_targets=1),
        "early": dict(target_layer="features.20", image_size=48, num_targets=1),
    }
    return {
        key: GradCAMSession(export_onnx(vgg19, root / f"{key}.onnx", validate=False, **spec), "cpu")
        for key, spec in specs.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize("key", ["odd", "pool", "early"])
def test_layer_variants_match_eager(small_exports, vgg19, key, rng):
    session = small_exports[key]
    size, k = session.image_size, session.num_targets
    images = torch.randn(3, 3, size, size, generator=rng)
    targets = torch.tensor([[-1, 4, -999][:k], [7, -2, 0][:k], [-1000, -1, 3][:k]])
    assert_session_matches_eager(session, vgg19, images, targets)


@pytest.mark.slow
@pytest.mark.parametrize(
    "targets",
    [None, 7, [1, 2, 3, 4], np.array([[5], [-1], [-3], [-1000]]), torch.tensor([[-2]] * 4)],
    ids=["none", "int", "list", "array", "tensor"],
)
def test_target_forms(small_exports, vgg19, targets, rng):
    session = small_exports["pool"]  # K = 1
    images = torch.randn(4, 3, 64, 64, generator=rng)
    got, _ = assert_session_matches_eager(session, vgg19, images, targets)
    if targets is None:
        assert torch.equal(got.target_classes[:, 0], got.logits.argmax(dim=1))


@pytest.mark.slow
def test_numpy_and_single_image_inputs(small_exports, rng):
    session = small_exports["pool"]
    image = torch.randn(3, 64, 64, generator=rng)
    from_tensor = session(image)
    from_numpy = session(image.numpy())
    assert from_tensor.cams.shape == (1, 1, 64, 64)
    assert torch.equal(from_tensor.cams, from_numpy.cams)


@pytest.mark.slow
def test_results_do_not_alias_reused_buffers(small_exports, rng):
    session = small_exports["pool"]
    first_images = torch.randn(2, 3, 64, 64, generator=rng)
    first = session(first_images)
    kept = {name: getattr(first, name).clone() for name in FIELDS}
    session(torch.randn(2, 3, 64, 64, generator=rng))  # same batch size: same buffers
    for name in FIELDS:
        assert torch.equal(getattr(first, name), kept[name]), name


@pytest.mark.slow
def test_max_batch_size_splits_without_losing_items(small_exports, vgg19, rng):
    path = small_exports["pool"].path
    chunked = GradCAMSession(path, device="cpu", max_batch_size=2)
    images = torch.randn(5, 3, 64, 64, generator=rng)
    whole = small_exports["pool"](images)
    parts = chunked(images)
    assert parts.cams.shape == whole.cams.shape
    for name in FIELDS:
        assert relative_error(getattr(parts, name), getattr(whole, name)) < TOLERANCE


@pytest.mark.slow
def test_tie_model_exports_and_matches_autograd(tmp_path):
    from test_graph import _integer_tie_model

    model = _integer_tie_model()
    path = export_onnx(
        model,
        tmp_path / "ties.onnx",
        target_layer="features.0",
        image_size=13,
        num_targets=2,
        validate=False,
    )
    images = torch.randint(0, 3, (4, 3, 13, 13), generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[-1, -2]] * 4)
    assert_session_matches_eager(GradCAMSession(path, "cpu"), model, images.float(), targets)


@pytest.mark.slow
def test_metadata_round_trip(session_224):
    meta = session_224.metadata
    assert (meta.arch, meta.target_layer, meta.image_size, meta.num_targets) == (
        "vgg19",
        "features.35",
        224,
        3,
    )
    assert meta.num_classes == 1000 and meta.weights == "random:seed=0"
    assert len(meta.categories) == 1000 and meta.categories[281] == "tabby"
    assert meta.mean == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.slow
def test_export_validation_reports_error_figures(small_exports):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        different = load_vgg("vgg19", "random", seed=1)  # other weights: must fail, with figures
    with pytest.raises(ExportValidationError, match=r"relative errors logits \d\.\d+e"):
        validate_onnx(small_exports["pool"].path, different)


# ---- refusals: each names the problem ----


@pytest.mark.slow
@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (
            torch.zeros(2, 3, 32, 32),
            ValueError,
            r"expected images of shape \[B, 3, 64, 64\].*got \[2, 3, 32, 32\]",
        ),
        (torch.zeros(2, 64, 64, 3), ValueError, r"channels last"),
        (torch.zeros(2, 3, 64, 64, dtype=torch.uint8), TypeError, r"floating point.*uint8"),
        (torch.zeros(0, 3, 64, 64), ValueError, r"empty batch"),
        ([[1.0]], TypeError, r"torch.Tensor or numpy.ndarray"),
    ],
    ids=["size", "nhwc", "uint8", "empty", "list"],
)
def test_bad_images_are_refused(small_exports, images, error, match):
    with pytest.raises(error, match=match):
        small_exports["pool"](images)


@pytest.mark.slow
def test_non_finite_images_are_refused(small_exports):
    images = torch.zeros(2, 3, 64, 64)
    images[1, 0, 3, 4] = float("nan")
    images[0, 2, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="2 NaN or infinite values"):
        small_exports["pool"](images)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("targets", "error", "match"),
    [
        (1000, ValueError, r"target 1000 is out of range.*0\.\.999"),
        ([-1001, 0], ValueError, r"target -1001 is out of range"),
        ([1, 2, 3], ValueError, r"3 targets for a batch of 2"),
        (torch.zeros(2, 2, dtype=torch.int64), ValueError, r"computes 1 map\(s\) per image, got 2"),
        ([0.5, 1.0], TypeError, r"integers"),
    ],
    ids=["high", "low", "count", "k", "float"],
)
def test_bad_targets_are_refused(small_exports, targets, error, match):
    with pytest.raises(error, match=match):
        small_exports["pool"](torch.zeros(2, 3, 64, 64), targets)


@pytest.mark.slow
def test_files_that_are_not_gradcam_models_are_refused(tmp_path, small_exports):
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(small_exports["pool"].path.read_bytes()[:4096])
    for path, match in [
        (text, "not a readable ONNX model"),
        (empty, "is empty"),
        (truncated, "not a readable ONNX model"),
        (tmp_path / "missing.onnx", "no model file"),
    ]:
        with pytest.raises((NotAGradCAMModel, FileNotFoundError), match=match):
            GradCAMSession(path, "cpu")


def _tiny_plain_onnx(path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), path, dynamo=True, external_data=False)
    return path


def test_onnx_without_gradcam_metadata_is_refused(tmp_path):
    path = _tiny_plain_onnx(tmp_path / "plain.onnx")
    with pytest.raises(NotAGradCAMModel, match="not a gradcam_fast model"):
        GradCAMSession(path, "cpu")


def test_unknown_format_version_is_refused(tmp_path):
    model = make_tiny_vgg()
    path = export_onnx(model, tmp_path / "tiny.onnx", image_size=32, validate=False)
    proto = onnx.load(path)
    for prop in proto.metadata_props:
        if prop.key == "gradcam_fast.format_version":
            prop.value = "99"
    onnx.save(proto, path)
    with pytest.raises(NotAGradCAMModel, match="format version 99"):
        GradCAMSession(path, "cpu")


@pytest.mark.slow
def test_cuda_without_provider_is_an_error_not_a_fallback(small_exports):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match="CUDA"):
        GradCAMSession(small_exports["pool"].path, device="cuda")
    auto = GradCAMSession(small_exports["pool"].path, device="auto")
    assert auto.device.type == "cpu" and auto.providers == ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def cw_session(vgg19, tmp_path_factory):
    path = tmp_path_factory.mktemp("cw") / "cw.onnx"
    return GradCAMSession(
        export_onnx(vgg19, path, image_size=64, num_targets=2, channel_weights_only=True), "cpu"
    )  # export validates the channel weights against the eager reference


@pytest.mark.slow
def test_channel_weights_model_matches_eager(cw_session, vgg19, rng):
    images = torch.randn(3, 3, 64, 64, generator=rng)
    targets = torch.tensor([[-1, 4], [7, -2], [-1000, 0]])
    got, _ = assert_session_matches_eager(cw_session, vgg19, images, targets)
    assert got.gradients is None and got.channel_weights.shape == (3, 2, 512)
    assert cw_session.metadata.gradients is False
    chunked = GradCAMSession(cw_session.path, "cpu", max_batch_size=2)(images, targets)
    assert torch.allclose(chunked.cams, got.cams, atol=1e-6) and chunked.gradients is None


@pytest.mark.slow
def test_channel_weights_model_refuses_methods_needing_gradients(cw_session):
    with pytest.raises(
        ValueError, match=r"'hirescam' needs the gradients.*channel_weights_only=True"
    ):
        cw_session(torch.zeros(1, 3, 64, 64), method="hirescam")
