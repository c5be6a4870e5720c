"""Maps computed in the graph (export_onnx(..., maps=True)): parity of `cams` and `cams_lowres`
with the eager reference and the session's torch post-processing, for every exportable method,
float and raw-pixel input, K > 1, flat maps; the session's use of them; metadata; refusals."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx
from gradcam_fast.cams.methods import METHODS
from gradcam_fast.cams.postprocess import upsample_normalize
from gradcam_fast.check.compare import relative_error
from gradcam_fast.check.maps import compare_maps, failing_map_figures, reference_maps
from gradcam_fast.export.maps import EXPORTABLE_METHODS
from gradcam_fast.export.validate import ExportValidationError, validate_onnx
from gradcam_fast.format.metadata import ModelMetadata
from gradcam_fast.format.preprocessing import normalize_pixels

S, K = 32, 2
TARGETS = torch.tensor([[-1, -2], [3, -1], [0, 9], [-3, 5]])


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vgg(batch_norm=True, seed=5)


def _pixels(batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, S, S, 3), generator=gen).to(torch.uint8)


def _inputs(raw: bool, meta: ModelMetadata, seed: int = 7):
    """(what the model takes, the normalized float images eager gets)."""
    pixels = _pixels(len(TARGETS), seed)
    images = normalize_pixels(pixels, meta.mean, meta.std)
    return (pixels if raw else images), images


def _ort_outputs(path, x, targets) -> dict[str, np.ndarray]:
    """The file run by plain ONNX Runtime, no gradcam_fast in between."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    out = session.run(None, {"images": x.numpy(), "targets": targets.numpy()})
    return dict(zip(names, out, strict=True))


# Every method once, float and raw input both for gradcam and layercam; the rest are slow only
# because each export takes seconds here.
CASES = [
    ("gradcam", False),
    ("gradcam", True),
    pytest.param("layercam", False, marks=pytest.mark.slow),
    pytest.param("layercam", True, marks=pytest.mark.slow),
    pytest.param("gradcam++", True, marks=pytest.mark.slow),
    pytest.param("xgradcam", False, marks=pytest.mark.slow),
    pytest.param("hirescam", True, marks=pytest.mark.slow),
    pytest.param("gradcamelementwise", False, marks=pytest.mark.slow),
]


def test_cases_cover_every_exportable_method():
    methods = {c.values[0] if hasattr(c, "values") else c[0] for c in CASES}
    assert methods == set(EXPORTABLE_METHODS) == set(METHODS) - {"eigencam"}


@pytest.mark.parametrize(("method", "raw"), CASES)
def test_in_graph_maps_match_eager_and_session(tiny, tmp_path, method, raw):
    path = export_onnx(  # validated at export: cams and cams_lowres against eager
        tiny, tmp_path / "m.onnx", image_size=S, num_targets=K, maps=True, method=method,
        raw_pixels=raw,
    )  # fmt: skip
    session = GradCAMSession(path, device="cpu")
    meta = session.metadata
    assert (meta.maps, meta.method) == (True, method)
    assert meta.input_format == ("uint8_nhwc" if raw else "float_nchw")
    x, images = _inputs(raw, meta)
    got = session(x, TARGETS)
    assert got.cams.shape == (len(TARGETS), K, S, S) and got.cams_lowres.shape[:2] == (4, K)

    # The session returns the graph's own outputs.
    direct = _ort_outputs(path, x, TARGETS)
    assert list(direct)[-2:] == ["cams", "cams_lowres"]
    assert np.array_equal(got.cams.numpy(), direct["cams"])
    assert np.array_equal(got.cams_lowres.numpy(), direct["cams_lowres"])

    # ... which equal the eager reference's activations and gradients put through the method
    # and the torch post-processing (what a session computes for a model without maps).
    ref = reference_maps(eager_gradcam(tiny, images, TARGETS), method, S)
    assert torch.equal(got.target_classes, ref.target_classes)
    assert ref.cams_lowres.amax() > 0 and ref.cams.amax() == 1
    assert relative_error(got.cams_lowres, ref.cams_lowres) < 1e-4
    assert relative_error(got.cams, ref.cams) < 1e-4
    assert relative_error(got.cams, upsample_normalize(got.cams_lowres, S)) < 1e-5
    assert torch.isfinite(got.cams).all() and got.cams.min() >= 0 and got.cams.max() <= 1

    with pytest.raises(ValueError, match=re.escape(f"computes {method!r} maps in its graph")):
        session(x, TARGETS, method="eigencam")
    assert torch.equal(session(x, TARGETS, method=method).cams, got.cams)


@pytest.fixture(scope="module")
def gradcam_path(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("maps") / "gradcam_maps.onnx"
    return export_onnx(tiny, path, image_size=S, num_targets=K, maps=True)


def test_file_declares_outputs_and_metadata(gradcam_path):
    proto = onnx.load(gradcam_path, load_external_data=False)
    outputs = {o.name: o.type.tensor_type for o in proto.graph.output}
    assert list(outputs) == [
        "logits", "target_classes", "activations", "gradients", "cams", "cams_lowres"
    ]  # fmt: skip
    cams = [d.dim_value or d.dim_param for d in outputs["cams"].shape.dim]
    assert cams[1:] == [K, S, S] and isinstance(cams[0], str)  # dynamic batch
    assert outputs["cams"].elem_type == onnx.TensorProto.FLOAT
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["gradcam_fast.maps"] == "true" and props["gradcam_fast.method"] == '"gradcam"'


def test_session_takes_other_batch_sizes_and_chunks(gradcam_path, tiny):
    session = GradCAMSession(gradcam_path, device="cpu", max_batch_size=2)
    images = torch.randn(5, 3, S, S, generator=torch.Generator().manual_seed(3))
    got = session(images)  # top-K classes, chunked 2 + 2 + 1
    ref = reference_maps(eager_gradcam(tiny, images, [[-1, -2]] * 5), "gradcam", S)
    assert relative_error(got.cams, ref.cams) < 1e-4


def test_metadata_without_maps_fields_still_reads():
    meta = ModelMetadata(
        arch="vgg19", target_layer="features.35", image_size=224, num_targets=1,
        num_classes=1000, mean=(0.5,) * 3, std=(0.5,) * 3, weights="random",
    )  # fmt: skip
    props = meta.to_props()
    old = {k: v for k, v in props.items() if not k.endswith((".maps", ".method"))}
    assert len(old) == len(props) - 2
    read = ModelMetadata.from_props(old)
    assert (read.maps, read.method) == (False, None)
    assert read.output_names == ("logits", "target_classes", "activations", "gradients")
    with_maps = ModelMetadata(**{**vars(meta), "maps": True, "method": "layercam"})
    back = ModelMetadata.from_props(with_maps.to_props())
    assert back == with_maps and back.output_names[-2:] == ("cams", "cams_lowres")


def test_channel_weights_model_maps(tiny, tmp_path):
    """channel_weights_only=True with maps: Grad-CAM maps from the channel weights, in the graph."""
    path = export_onnx(
        tiny,
        tmp_path / "cw.onnx",
        image_size=S,
        num_targets=K,
        maps=True,
        channel_weights_only=True,
    )
    session = GradCAMSession(path, device="cpu")
    assert session.metadata.output_names[3:] == ("channel_weights", "cams", "cams_lowres")
    images = torch.randn(4, 3, S, S, generator=torch.Generator().manual_seed(4))
    got = session(images, TARGETS)
    ref = eager_gradcam(tiny, images, TARGETS)
    assert got.gradients is None and got.channel_weights.shape == (4, K, 16)
    assert relative_error(got.cams_lowres, ref.cams_lowres) < 1e-4
    assert relative_error(got.cams, ref.cams) < 1e-4


def test_flat_maps_are_zeros_not_nan(tmp_path):
    """A target layer whose output is all zero gives all-zero low-resolution maps: the flat-map
    rule of upsample_normalize, in the graph, makes their cams zeros (0/0 would be NaN)."""
    model = make_tiny_vgg(seed=2)
    last_conv = [m for m in model.features if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last_conv.weight.zero_()
        last_conv.bias.fill_(-1.0)  # ReLU(-1) = 0 everywhere
    path = export_onnx(
        model, tmp_path / "flat.onnx", image_size=S, num_targets=K, maps=True, raw_pixels=True
    )
    session = GradCAMSession(path, device="cpu")
    out = _ort_outputs(path, _pixels(3, seed=1), torch.tensor([[-1, -2]] * 3))
    assert np.all(out["cams_lowres"] == 0)
    assert np.all(out["cams"] == 0)  # exactly zero, finite
    got = session(_pixels(2, seed=2))
    assert torch.equal(got.cams, torch.zeros(2, K, S, S))


def test_float16_maps_model_validates(tiny, tmp_path):
    """precision="float16" with maps: the float16 limits (the maps part's tensors are rounded to float16
    between its ops by the converter, see maps.MAP_LIMITS)."""
    path = export_onnx(
        tiny, tmp_path / "fp16.onnx", image_size=S, num_targets=K, maps=True, precision="float16"
    )
    errors = validate_onnx(path, tiny)
    assert errors["cams_lowres"] < 5e-2 and errors["cams_postprocess"] < 5e-3
    assert GradCAMSession(path, device="cpu").metadata.precision == "float16"


def test_compare_maps_judges_cams_and_fails_on_nan(gradcam_path, tiny):
    session = GradCAMSession(gradcam_path, device="cpu")
    images = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(5))
    got = session(images)
    ref = reference_maps(eager_gradcam(tiny, images, [[-1, -2]] * 2), "gradcam", S)
    errors = compare_maps(got, ref)
    assert set(errors) == {"cams", "cams_postprocess"} and not failing_map_figures(errors)
    got.cams[0, 0, 3, 3] += 0.01
    assert failing_map_figures(compare_maps(got, ref)) == ["cams", "cams_postprocess"]
    got.cams[0, 0, 3, 3] = float("nan")
    assert failing_map_figures(compare_maps(got, ref)) == ["cams", "cams_postprocess"]
    assert failing_map_figures({"cams": 0.5}, "float16") == []  # float16: reported, not judged


def test_validation_compares_the_maps(gradcam_path, tiny):
    errors = validate_onnx(gradcam_path, tiny)
    assert errors["cams"] < 1e-4 and errors["cams_postprocess"] < 1e-5
    with pytest.raises(ExportValidationError, match="cams"):
        validate_onnx(gradcam_path, make_tiny_vgg(batch_norm=True, seed=6))


def test_aug_smooth_on_a_maps_model(gradcam_path, tiny):
    session = GradCAMSession(gradcam_path, device="cpu")
    images = torch.randn(2, 3, S, S, generator=torch.Generator().manual_seed(6))
    got = session(images, [[-1, -2]] * 2, aug_smooth=True)
    torch_session = GradCAMSession.from_model(tiny, image_size=S, num_targets=K, device="cpu")
    want = torch_session(images, [[-1, -2]] * 2, aug_smooth=True)
    assert relative_error(got.cams, want.cams) < 1e-4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"maps": True, "method": "eigencam"}, "eigendecomposition"),
        ({"maps": True, "method": "nope"}, "unknown CAM method"),
        ({"method": "gradcam"}, "pass maps=True"),
        ({"maps": True, "method": "layercam", "channel_weights_only": True}, "needs the gradients"),
    ],
)
def test_export_refuses(tiny, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_onnx(tiny, tmp_path / "x.onnx", image_size=S, **kwargs)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_export_passes_maps(monkeypatch, tmp_path):
    from gradcam_fast import cli
    from gradcam_fast.export import onnx_export

    calls = []
    monkeypatch.setattr(onnx_export, "export_onnx", lambda *a, **kw: calls.append(kw) or a[1])
    base = ["export", "-o", str(tmp_path / "m.onnx"), "--arch", "vgg11", "--weights", "random"]
    assert cli.main([*base, "--maps", "--method", "layercam"]) == 0
    assert cli.main([*base, "--maps"]) == 0
    assert cli.main(base) == 0
    assert [(c["maps"], c["method"]) for c in calls] == [
        (True, "layercam"), (True, None), (False, None)
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        cli.main([*base, "--maps", "--method", "eigencam"])
