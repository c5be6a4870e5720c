"""Starting ONNX Runtime's GPU providers, checked without a GPU: no silent fall-back to the CPU,
errors that name what is missing, TensorRT availability decided by loading its library, and
TensorRT's boolean options in the form ONNX Runtime's Python binding accepts."""

from __future__ import annotations

import ctypes

import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx
from gradcam_fast.format.metadata import NotAGradCAMModel
from gradcam_fast.runtime import ort_backend, providers
from gradcam_fast.runtime import session as session_module

CUDA = torch.device("cuda", 0)
GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("start") / "tiny.onnx"
    return export_onnx(make_tiny_vgg(), path, image_size=40, num_targets=1, validate=False)


@pytest.fixture
def gpu_listed(monkeypatch):
    """ONNX Runtime (and torch) claim a GPU provider, as onnxruntime-gpu does on any machine."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort_backend.ort, "get_available_providers", lambda: GPU_PROVIDERS)
    monkeypatch.setattr(session_module, "available_devices", lambda: ["cpu", "cuda"])


def _loader_failing_on(missing: str):
    """A ctypes.CDLL whose provider libraries fail as the dynamic loader does when `missing`
    (one of their dependencies) is absent."""

    def load(name, mode=0):
        if "providers_shared" in str(name):
            return object()
        raise OSError(f"{missing}: cannot open shared object file: No such file or directory")

    return load


def test_tensorrt_boolean_options_are_true_or_false(tmp_path):
    options = ort_backend.tensorrt_provider_options(CUDA, tmp_path)
    flags = {k: v for k, v in options.items() if k.endswith("_enable")}
    assert flags == {
        "trt_engine_cache_enable": "True",
        "trt_timing_cache_enable": "True",
        "trt_fp16_enable": "False",
    }
    for bad in ("1", "0", "yes"):
        with pytest.raises(ValueError, match="trt_fp16_enable takes 'True' or 'False'"):
            ort_backend.tensorrt_provider_options(CUDA, tmp_path, extra={"trt_fp16_enable": bad})
    with pytest.raises(ValueError, match="trt_dump_subgraphs"):
        ort_backend.tensorrt_provider_options(CUDA, tmp_path, extra={"trt_dump_subgraphs": "1"})
    extra = {"trt_fp16_enable": "True", "trt_max_workspace_size": "1073741824"}
    assert ort_backend.tensorrt_provider_options(CUDA, tmp_path, extra=extra)[
        "trt_fp16_enable"
    ] == ("True")


def test_a_provider_that_is_not_built_in_does_not_load():
    assert ort_backend.provider_load_error("TensorrtExecutionProvider") is not None
    assert not ort_backend.tensorrt_available()  # the CPU onnxruntime of CI and this machine


def test_a_listed_provider_whose_library_fails_to_load_is_not_available(gpu_listed, monkeypatch):
    """onnxruntime-gpu lists TensorRT without TensorRT installed: only loading tells."""
    monkeypatch.setattr(providers.ctypes, "CDLL", _loader_failing_on("libnvinfer.so.10"))
    assert not ort_backend.tensorrt_available()
    assert "libnvinfer.so.10" in ort_backend.provider_load_error("TensorrtExecutionProvider")
    monkeypatch.setattr(providers.ctypes, "CDLL", lambda name, mode=0: object())
    assert ort_backend.tensorrt_available()


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("libcuda.so.1", "NVIDIA driver"),
        ("libcudnn.so.9", "cuDNN 9"),
        ("libcublasLt.so.13", "CUDA runtime libraries"),
        ("libcudart.so.13", "CUDA runtime libraries"),
    ],
)
def test_cuda_that_does_not_load_names_what_is_missing(
    gpu_listed, monkeypatch, tiny_onnx, missing, named
):
    """ONNX Runtime logs a warning and builds a CPU session when the CUDA provider's library does
    not load (seen with onnxruntime-gpu 1.31.1, enable_fallback=0 too): the session refuses, and
    says which library is missing."""
    monkeypatch.setattr(providers.ctypes, "CDLL", _loader_failing_on(missing))
    with pytest.raises(RuntimeError, match="did not start its CUDAExecutionProvider") as info:
        GradCAMSession(tiny_onnx, device="cuda")
    assert missing in str(info.value) and named in str(info.value)


def test_forced_cuda_on_a_cpu_onnxruntime_raises_never_a_cpu_session(gpu_listed, tiny_onnx):
    """The real (CPU) onnxruntime, told CUDA is there: it builds a CPU session, which must never
    reach the caller; the error names the provider library that is not there."""
    assert providers.ctypes.CDLL is ctypes.CDLL  # the real loader
    with pytest.raises(RuntimeError, match="did not start its CUDAExecutionProvider") as info:
        GradCAMSession(tiny_onnx, device="cuda")
    assert "libonnxruntime_providers_cuda" in str(info.value)


def test_session_creation_never_falls_back(gpu_listed, monkeypatch, tiny_onnx):
    """Fall-back is off before creation (ONNX Runtime otherwise retries on the CPU, or on CUDA
    for TensorRT, and only prints the error); the real error comes out with what is missing."""
    monkeypatch.setattr(providers.ctypes, "CDLL", _loader_failing_on("libnvinfer.so.10"))
    calls, failure = [], {}

    def failing_session(path, options, providers, **kwargs):
        calls.append(kwargs)
        raise failure["error"]

    monkeypatch.setattr(ort_backend.ort, "InferenceSession", failing_session)
    failure["error"] = RuntimeError(
        "onnxruntime_pybind_state.cc:729 RegisterTensorRTPluginsAsCustomOps Please install "
        "TensorRT libraries as mentioned in the GPU requirements page"
    )
    provider_list = [
        ("TensorrtExecutionProvider", {}),
        ("CUDAExecutionProvider", {}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(RuntimeError, match="could not start TensorrtExecutionProvider") as info:
        ort_backend._open(tiny_onnx, ort_backend.session_options(1), provider_list)
    assert calls == [{"enable_fallback": 0}]
    assert "libnvinfer.so.10" in str(info.value) and "pip install tensorrt" in str(info.value)

    failure["error"] = RuntimeError("CUDNN failure 1003: CUDNN_STATUS_BAD_PARAM")
    with pytest.raises(RuntimeError, match=r"could not start CUDAExecutionProvider.*CUDNN"):
        ort_backend._open(tiny_onnx, ort_backend.session_options(1), provider_list[1:])

    # a broken model file stays a model error, whatever the providers
    failure["error"] = RuntimeError("Load model from x.onnx failed: Protobuf parsing failed")
    with pytest.raises(NotAGradCAMModel, match="not a readable ONNX model"):
        ort_backend._open(tiny_onnx, ort_backend.session_options(1), provider_list[1:])
