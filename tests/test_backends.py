"""Backend selection and options that need no GPU: provider lists, CUDA options, the float16
export's structure and the torch backend on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx
from gradcam_fast.check.compare import compare_with_reference, failing_figures
from gradcam_fast.export.validate import validate_onnx
from gradcam_fast.runtime import ort_backend
from gradcam_fast.runtime import session as session_module

CUDA = torch.device("cuda", 0)


def test_cpu_device_uses_only_the_cpu_provider():
    assert ort_backend.providers_for(torch.device("cpu"), {}, ["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]


def test_cuda_without_the_cuda_provider_says_how_to_get_it():
    with pytest.raises(RuntimeError, match=r"onnxruntime-gpu.*gradcam_fast\[gpu\]"):
        ort_backend.providers_for(CUDA, {}, ["AzureExecutionProvider", "CPUExecutionProvider"])


def test_cuda_provider_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
        ort_backend.providers_for(CUDA, {}, ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_cuda_provider_list_puts_cuda_first_with_its_options(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    options = ort_backend.cuda_provider_options(CUDA, cuda_graphs=True)
    providers = ort_backend.providers_for(
        CUDA, options, ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert providers == [("CUDAExecutionProvider", options), "CPUExecutionProvider"]
    assert options["use_tf32"] == "0"  # strict float32: ONNX Runtime turns TF32 on by default
    assert options["enable_cuda_graph"] == "1"
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"


def test_cudnn_search_names_are_checked():
    with pytest.raises(ValueError, match="EXHAUSTIVE"):
        ort_backend.cuda_provider_options(CUDA, cudnn_search="fastest")


def test_auto_picks_cuda_only_when_usable():
    assert session_module._resolve_device("auto", cuda_usable=True) == CUDA
    assert session_module._resolve_device("auto", cuda_usable=False).type == "cpu"
    assert session_module._resolve_device("cuda:1", cuda_usable=False) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda"):
        session_module._resolve_device("tpu", cuda_usable=False)


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vgg([8, "M", 16, "M", 32, "M"], pool=3)


@pytest.fixture(scope="module")
def tiny_fp32_onnx(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("fp32") / "tiny.onnx"
    return export_onnx(tiny, path, image_size=40, num_targets=2, validate=False)


def test_cuda_graphs_need_cuda(tiny, tiny_fp32_onnx):
    with pytest.raises(ValueError, match="cuda_graphs=True needs device='cuda'"):
        GradCAMSession(tiny_fp32_onnx, device="cpu", cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs=True needs device='cuda'"):
        GradCAMSession.from_model(tiny, image_size=40, device="cpu", cuda_graphs=True)


def test_fp16_export_keeps_float32_io_and_a_float32_head(tiny, tmp_path):
    path = export_onnx(
        tiny, tmp_path / "fp16.onnx", image_size=40, num_targets=2, precision="float16"
    )
    proto = onnx.load(path)
    io_types = {
        v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]
    }
    f32, i64, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT16
    assert io_types == {
        "images": f32,
        "targets": i64,
        "logits": f32,
        "target_classes": i64,
        "activations": f32,
        "gradients": f32,
    }
    floats = {f16, f32, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    big = {
        init.data_type
        for init in proto.graph.initializer
        if len(init.dims) >= 2 and init.data_type in floats  # weights, not index constants
    }
    assert big == {f16, f32}  # convolution kernels in float16, Linear weights in float32
    for init in proto.graph.initializer:
        if len(init.dims) == 2:  # Linear weights: the head stays float32
            assert init.data_type == f32, init.name
        if len(init.dims) == 4:  # convolution kernels of the body
            assert init.data_type == f16, init.name
    session = GradCAMSession(path, "cpu")
    assert session.metadata.precision == "float16"
    errors = validate_onnx(path, tiny)  # float16 limits, against the float32 reference
    assert errors["cams_lowres"] < 5e-2


@pytest.mark.parametrize("precision", ["float32", "tf32", "float16"])
def test_torch_backend_on_cpu_matches_eager(tiny, precision):
    session = GradCAMSession.from_model(
        tiny, image_size=40, num_targets=2, device="cpu", precision=precision
    )
    assert session.device.type == "cpu" and session.providers[0].startswith("torch")
    images = torch.randn(3, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[-1, 2], [5, -3], [0, -1]])
    errors = compare_with_reference(session(images, targets), eager_gradcam(tiny, images, targets))
    assert failing_figures(errors, "float32" if precision != "float16" else "float16") == []


def test_torch_backend_leaves_the_callers_model_alone(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    GradCAMSession.from_model(tiny, image_size=40, device="cpu", precision="float16")
    after = tiny.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before
    )


def test_unknown_precision_is_refused(tiny):
    with pytest.raises(ValueError, match="precision must be one of"):
        GradCAMSession.from_model(tiny, image_size=40, device="cpu", precision="int8")


def test_external_data_export_with_a_low_memory_session(tiny, tiny_fp32_onnx, tmp_path):
    path = export_onnx(tiny, tmp_path / "ext.onnx", image_size=40, num_targets=2,
                       external_data=True)  # fmt: skip
    proto = onnx.load(path, load_external_data=False)
    biggest = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    assert biggest.data_location == onnx.TensorProto.EXTERNAL  # the weights left the model
    assert path.with_name("ext.onnx.data").stat().st_size > 60_000
    images = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    lean = GradCAMSession(path, "cpu", low_memory=True)(images, [[-1, 1], [2, -2]])
    usual = GradCAMSession(tiny_fp32_onnx, "cpu")(images, [[-1, 1], [2, -2]])
    errors = compare_with_reference(lean, usual)
    assert failing_figures(errors) == [], errors


TRT_AVAILABLE = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def test_tensorrt_goes_first_with_cuda_behind_it(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = ort_backend.cuda_provider_options(CUDA)
    trt = ort_backend.tensorrt_provider_options(CUDA, tmp_path, extra={"trt_fp16_enable": "True"})
    providers = ort_backend.providers_for(CUDA, cuda, TRT_AVAILABLE, trt)
    assert providers == [
        ("TensorrtExecutionProvider", trt),
        ("CUDAExecutionProvider", cuda),  # runs the nodes TensorRT does not take
        "CPUExecutionProvider",
    ]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_engine_cache_path"] == str(
        tmp_path
    )
    assert trt["trt_fp16_enable"] == "True"  # the caller's override wins
    assert ort_backend.tensorrt_provider_options(CUDA, tmp_path)["trt_fp16_enable"] == "False"


def test_tensorrt_without_its_provider_says_how_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    trt = ort_backend.tensorrt_provider_options(CUDA, tmp_path)
    with pytest.raises(RuntimeError, match=r"TensorRT execution provider.*pip install tensorrt"):
        ort_backend.providers_for(CUDA, {}, ["CUDAExecutionProvider", "CPUExecutionProvider"], trt)
    with pytest.raises(ValueError, match="tensorrt=True needs device='cuda'"):
        ort_backend.providers_for(torch.device("cpu"), {}, TRT_AVAILABLE, trt)


def test_tensorrt_session_options_are_checked(tiny_fp32_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="tensorrt=True needs device='cuda'"):
        GradCAMSession(tiny_fp32_onnx, device="cpu", tensorrt=True)
    with pytest.raises(ValueError, match="tensorrt_options given without tensorrt=True"):
        GradCAMSession(tiny_fp32_onnx, device="cpu", tensorrt_options={"trt_fp16_enable": "True"})
    with pytest.raises(ValueError, match="cannot be combined with tensorrt=True"):
        ort_backend.OrtRunner(tiny_fp32_onnx, CUDA, cuda_graphs=True, tensorrt_options={})
    assert not (tmp_path / "tensorrt").exists()  # nothing made on the way to an error


def test_tensorrt_that_did_not_start_is_an_error(tiny_fp32_onnx, tmp_path, monkeypatch):
    """ONNX Runtime may drop a provider it cannot start (missing libraries): a session asked for
    TensorRT must then refuse to run, not quietly run on the CUDA provider."""
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: TRT_AVAILABLE)
    monkeypatch.setattr(session_module, "available_devices", lambda: ["cpu", "cuda"])
    opened = {}

    class StartedWithoutTensorRT:
        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def fake_open(path, options, providers):
        opened["providers"] = providers
        return StartedWithoutTensorRT()

    monkeypatch.setattr(ort_backend, "_open", fake_open)
    with pytest.raises(RuntimeError, match="did not start its TensorrtExecutionProvider"):
        GradCAMSession(tiny_fp32_onnx, device="cuda", tensorrt=True)
    names = [p[0] if isinstance(p, tuple) else p for p in opened["providers"]]
    assert names == TRT_AVAILABLE
    trt_options = opened["providers"][0][1]
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / "tensorrt")
    assert (tmp_path / "tensorrt").is_dir()
