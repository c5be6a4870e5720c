"""The OpenVINO backend (issue 21): the same results as ONNX Runtime and the eager reference,
explicit precision, per-thread requests, the compiled-model cache, NNCF int8, and the refusals
and fallbacks (QLinearConv, not installed, no native bfloat16). Skipped without openvino."""

from __future__ import annotations

import builtins
import os
import threading
import warnings

import numpy as np
import onnx
import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx
from gradcam_fast.check.compare import compare_with_reference, failing_figures
from gradcam_fast.runtime import openvino_backend
from gradcam_fast.runtime.cpu_choice import FLAGS_ENV, cpu_flags

pytest.importorskip("openvino")

SIZE = 40


def _own_cpu_flags() -> frozenset[str]:
    """This CPU's flags, not conftest's pin (GRADCAM_FAST_CPU_FLAGS="", set when it is imported,
    before this module is collected)."""
    pinned = os.environ.pop(FLAGS_ENV, None)
    try:
        return cpu_flags()
    finally:
        if pinned is not None:
            os.environ[FLAGS_ENV] = pinned


_REAL_FLAGS = _own_cpu_flags()


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder (compiled models, int8 files), and this CPU's own
    flags (conftest pins none)."""
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("GRADCAM_FAST_CPU_FLAGS", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vgg([8, "M", 16, "M", 32, "M"], pool=3)


@pytest.fixture(scope="module")
def files(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ov")
    kw = {"image_size": SIZE, "num_targets": 2, "validate": False}
    return {
        "full": export_onnx(tiny, folder / "full.onnx", **kw),
        "cw": export_onnx(tiny, folder / "cw.onnx", channel_weights_only=True, **kw),
        "maps": export_onnx(tiny, folder / "maps.onnx", maps=True, raw_pixels=True, **kw),
    }


def _images(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


TARGETS = {
    "top_k": lambda b: None,
    "ranked_numpy": lambda b: np.array([[-2, -1]] * b),
    "classes_tensor": lambda b: torch.tensor([[i % 10, 9 - i % 10] for i in range(b)]),
    "explicit_and_ranked": lambda b: [[i % 10, -1 - i % 2] for i in range(b)],
}


@pytest.mark.parametrize("kind", ["full", "cw"])
@pytest.mark.parametrize("batch", [1, 3, 8])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_float32_matches_the_eager_reference(tiny, files, kind, batch, target):
    session = GradCAMSession(files[kind], device="cpu", backend="openvino", precision="float32")
    x = _images(batch, seed=batch)
    got = session(x, TARGETS[target](batch))
    ref = eager_gradcam(tiny, x, got.target_classes)
    errors = compare_with_reference(got, ref)
    assert not failing_figures(errors), errors
    assert got.cams_lowres.shape == (batch, 2, 10, 10)
    assert (got.gradients is None) == (kind == "cw")


def test_float32_is_what_the_compiled_model_runs(files):
    session = GradCAMSession(files["cw"], device="cpu", backend="openvino", precision="float32")
    assert session._runner.inference_precision == "f32"
    assert (
        session._runner.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    )
    assert (session.backend, session.precision) == ("openvino", "float32")


@pytest.mark.skipif(
    not _REAL_FLAGS & {"avx512_bf16", "amx_bf16"}, reason="no native bfloat16 on this CPU"
)
def test_bfloat16_runs_bf16_and_keeps_the_maps(tiny, files):
    session = GradCAMSession(files["cw"], device="cpu", backend="openvino", precision="bfloat16")
    assert session._runner.inference_precision == "bf16"
    x = _images(8, seed=3)
    got = session(x)
    ref = GradCAMSession(files["cw"], device="cpu")(x, got.target_classes)
    errors = compare_with_reference(got, ref)
    assert not failing_figures(errors, "bfloat16"), errors
    assert errors["logits"] > 0  # really another precision than float32


def test_bfloat16_without_native_support_warns(files, monkeypatch):
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", "avx2")
    with pytest.warns(RuntimeWarning, match="without native bfloat16"):
        GradCAMSession(files["cw"], device="cpu", backend="openvino", precision="bfloat16")


def test_maps_and_raw_pixels_match_onnx_runtime(files):
    pixels = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    ov_result = GradCAMSession(files["maps"], device="cpu", backend="openvino")(pixels)
    ort_result = GradCAMSession(files["maps"], device="cpu")(pixels)
    for name in ("cams", "cams_lowres", "logits", "activations", "gradients"):
        a, b = getattr(ov_result, name), getattr(ort_result, name)
        assert torch.isfinite(a).all()
        assert (a - b).abs().max() <= 1e-4 * b.abs().max(), name
    assert torch.equal(ov_result.target_classes, ort_result.target_classes)


def test_results_are_owned_by_the_caller(files):
    session = GradCAMSession(files["full"], device="cpu", backend="openvino")
    first = session(_images(2, seed=1))
    kept = {k: v.clone() for k, v in vars(first).items() if v is not None}
    session(_images(2, seed=2))  # same request, same batch size
    for name, value in kept.items():
        assert torch.equal(getattr(first, name), value), name


def test_threads_share_a_session_with_one_request_each(files):
    session = GradCAMSession(files["full"], device="cpu", backend="openvino")
    inputs = [_images(2, seed=10 + i) for i in range(4)]
    expected = [session(x).cams_lowres for x in inputs]
    got, requests = [None] * 4, [None] * 4
    barrier = threading.Barrier(4)

    def work(i):
        barrier.wait()
        for _ in range(3):
            got[i] = session(inputs[i]).cams_lowres
        requests[i] = id(session._runner._request())

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(requests)) == 4
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


def test_second_start_loads_the_compiled_model_from_the_cache(files, own_cache):
    first = GradCAMSession(files["cw"], device="cpu", backend="openvino")
    blobs = list((own_cache / "openvino").rglob("*.blob"))
    assert len(blobs) == 1 and not first._runner.loaded_from_cache
    second = GradCAMSession(files["cw"], device="cpu", backend="openvino")
    assert second._runner.loaded_from_cache
    assert list((own_cache / "openvino").rglob("*.blob")) == blobs
    x = _images(2)
    assert torch.equal(first(x).cams_lowres, second(x).cams_lowres)
    off = GradCAMSession(files["cw"], device="cpu", backend="openvino", compile_cache=False)
    assert not off._runner.loaded_from_cache


def test_options_reach_openvino(files):
    session = GradCAMSession(
        files["cw"],
        device="cpu",
        backend="openvino",
        intra_op_threads=2,
        performance_hint="THROUGHPUT",
        num_streams=2,
    )
    compiled = session._runner.compiled
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 2
    assert str(compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT"
    assert int(compiled.get_property("NUM_STREAMS")) == 2
    with pytest.raises(ValueError, match="hint must be one of"):
        GradCAMSession(files["cw"], device="cpu", backend="openvino", performance_hint="FAST")


@pytest.fixture(scope="module")
def ort_int8(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "ort_int8.onnx"
    calibration = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    return export_onnx(
        tiny, path, image_size=SIZE, num_targets=2, channel_weights_only=True, precision="int8",
        calibration=calibration, validate=False,
    )  # fmt: skip


def test_qlinearconv_file_names_the_op_and_auto_falls_back_with_a_warning(ort_int8, monkeypatch):
    with pytest.raises(openvino_backend.OpenVinoConversionError, match="QLinearConv") as info:
        GradCAMSession(ort_int8, device="cpu", backend="openvino")
    assert info.value.ops == ("QLinearConv",)
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", "amx_bf16 amx_int8")  # auto: OpenVINO int8
    with pytest.warns(RuntimeWarning, match=r"cannot run this file.*QLinearConv.*ONNX Runtime"):
        session = GradCAMSession(ort_int8, device="cpu", backend="auto")
    assert (session.backend, session.precision) == ("onnxruntime", "int8")
    assert torch.isfinite(session(_images(2)).cams).all()


def test_int8_by_nncf_is_made_once_per_calibration_set(tiny, files, own_cache):
    calibration = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    kw = {"device": "cpu", "backend": "openvino", "precision": "int8"}
    session = GradCAMSession(files["cw"], calibration=calibration, **kw)
    made = list((own_cache / "int8").glob("*.onnx"))
    assert [p.parent for p in made] == [own_cache / "int8"] and session.path == files["cw"]
    assert session.metadata.precision == "int8" and session.precision == "int8"
    proto = onnx.load(made[0])
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "QLinearConv" not in ops
    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    shapes = [len(i.dims) for i in proto.graph.initializer if i.data_type in int8]
    assert shapes.count(4) == 3  # the body's three convolution kernels
    assert shapes.count(2) == 0  # the head's Linear weights stay float32 by default
    stamp = made[0].stat().st_mtime_ns
    with warnings.catch_warnings(record=True) as said:  # the suite's CPU: x86, no VNNI
        warnings.simplefilter("always")
        again = GradCAMSession(files["cw"], calibration=calibration, **kw)  # from the cache
    assert not [w for w in said if "VNNI" in str(w.message)]  # NNCF's int8 held its maps there
    assert made[0].stat().st_mtime_ns == stamp
    GradCAMSession(files["cw"], calibration=calibration + 0.5, **kw)  # another set
    assert len(list((own_cache / "int8").glob("*.onnx"))) == 2
    x = _images(4, seed=9)
    got = again(x)
    ref = eager_gradcam(tiny, x, got.target_classes)
    errors = compare_with_reference(got, ref)
    assert not failing_figures(errors, "int8"), errors
    assert errors["logits"] > 1e-6  # quantized, not the float32 model


def test_head_weights_in_int8_on_request(files, tmp_path):
    from gradcam_fast.format.onnx_props import file_metadata
    from gradcam_fast.runtime.int8_cache import write_int8

    calibration = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    meta = file_metadata(files["cw"])
    out = write_int8(files["cw"], tmp_path / "h.onnx", meta, "openvino", calibration,
                     head_weights=True)  # fmt: skip
    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    shapes = [len(i.dims) for i in onnx.load(out).graph.initializer if i.data_type in int8]
    assert shapes.count(2) >= 3  # the head's three Linear weights (NNCF weight compression)
    got = GradCAMSession(out, device="cpu", backend="openvino")(_images(4))
    ref = GradCAMSession(files["cw"], device="cpu")(_images(4), got.target_classes)
    assert not failing_figures(compare_with_reference(got, ref), "int8")


def test_int8_needs_calibration_and_calibration_needs_int8(files):
    with pytest.raises(ValueError, match="needs calibration="):
        GradCAMSession(files["cw"], device="cpu", backend="openvino", precision="int8")
    with pytest.raises(ValueError, match="calibration= is for precision='int8'"):
        GradCAMSession(files["cw"], device="cpu", backend="openvino", calibration=_images(8))


def test_onnx_runtime_has_no_bfloat16(files):
    with pytest.raises(ValueError, match="ONNX Runtime has no bfloat16"):
        GradCAMSession(files["cw"], device="cpu", precision="bfloat16")


def test_openvino_not_installed_names_the_pip_command(files, monkeypatch):
    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name == "openvino" or name.startswith("openvino."):
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    with pytest.raises(openvino_backend.BackendNotInstalled, match=r"pip install .*openvino"):
        GradCAMSession(files["cw"], device="cpu", backend="openvino")


def test_openvino_refuses_cuda(files):
    with pytest.raises(ValueError, match="runs on the CPU"):
        GradCAMSession(files["cw"], device="cuda", backend="openvino")


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    from gradcam_fast.format.metadata import NotAGradCAMModel

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(NotAGradCAMModel, match="not a readable ONNX model"):
        GradCAMSession(bad, device="cpu", backend="openvino")


def test_metadata_is_read_without_onnx(files):
    from gradcam_fast.format.onnx_props import read_metadata_props

    proto = onnx.load(files["maps"], load_external_data=False)
    assert read_metadata_props(files["maps"]) == {p.key: p.value for p in proto.metadata_props}


def test_numpy_inputs_work(files):
    session = GradCAMSession(files["cw"], device="cpu", backend="openvino")
    x = _images(2, seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = session(x.numpy().astype(np.float32))
    assert torch.equal(a.cams_lowres, session(x).cams_lowres)


def test_auto_takes_the_next_int8_where_the_first_is_not_faster(files, monkeypatch):
    """Zen 4's row tries ONNX Runtime int8 first, then OpenVINO int8: measured 0.7x and 1.5x
    (the figures kept when each int8 model was made), auto runs OpenVINO's."""
    from gradcam_fast.runtime import int8_cache

    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", "avx512_bf16 avx512_vnni")
    monkeypatch.setattr(
        int8_cache,
        "measured_speedups",
        lambda path: {"8": 0.7 if "-onnxruntime-" in str(path) else 1.5},
    )
    calibration = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    with pytest.warns(RuntimeWarning, match=r"auto passes over onnxruntime int8.*0\.70x"):
        session = GradCAMSession(
            files["cw"], device="cpu", backend="auto", precision="auto", calibration=calibration
        )
    assert (session.backend, session.precision) == ("openvino", "int8")
    assert torch.isfinite(session(_images(2)).cams).all()
