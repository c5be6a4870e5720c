"""CUDA parity and stream ordering: every backend and precision against the float32 eager
reference. Skipped without a GPU (CI has none); run on a GPU machine with `pytest -m cuda`
or benchmarks/gpu_check.py."""

from __future__ import annotations

import onnxruntime as ort
import pytest
import torch

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx
from gradcam_fast.compare import compare_with_reference, failing_figures
from gradcam_fast.ort_backend import TENSORRT_EP, available_devices

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_ort_cuda = pytest.mark.skipif(
    "cuda" not in available_devices(), reason="needs onnxruntime-gpu's CUDA provider"
)
SIZE = 224


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(vgg19, images):
    """Float32 eager Grad-CAM on the CPU: the oracle for every CUDA path."""
    return eager_gradcam(vgg19, images, torch.tensor([[-1, 3]] * 8))


def check(session, images, reference, precision):
    got = session(images.cuda(), reference.target_classes)
    assert got.cams.device.type == "cuda"
    errors = compare_with_reference(got.to("cpu"), reference)
    assert failing_figures(errors, precision) == [], errors
    return got


@pytest.mark.parametrize("precision", ["float32", "float16"])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_torch_backend(vgg19, images, reference, precision, cuda_graphs):
    session = GradCAMSession.from_model(
        vgg19,
        image_size=SIZE,
        num_targets=2,
        device="cuda",
        precision=precision,
        cuda_graphs=cuda_graphs,
    )
    first = check(session, images, reference, precision)
    kept = first.cams.clone()
    check(session, images[:3], eager_slice(reference, 3), precision)  # another captured size
    session(torch.randn_like(images).cuda(), reference.target_classes)  # same size again
    assert torch.equal(first.cams, kept), "results must not alias replayed buffers"


def eager_slice(result, n):
    from gradcam_fast.result import GradCAMResult

    return GradCAMResult(**{k: v[:n] for k, v in vars(result).items()})


@pytest.fixture(scope="module")
def exports(vgg19, tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda_onnx")
    return {
        precision: export_onnx(
            vgg19,
            root / f"{precision}.onnx",
            image_size=SIZE,
            num_targets=2,
            fp16=precision == "float16",
            validate=False,
        )
        for precision in ("float32", "float16")
    }


@needs_ort_cuda
@pytest.mark.parametrize("precision", ["float32", "float16"])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_onnxruntime_cuda(exports, images, reference, precision, cuda_graphs):
    session = GradCAMSession(exports[precision], device="cuda", cuda_graphs=cuda_graphs)
    assert session.providers[0] == "CUDAExecutionProvider"
    check(session, images, reference, precision)
    check(session, images[:3], eager_slice(reference, 3), precision)


def _late_inputs(images: torch.Tensor) -> torch.Tensor:
    """Inputs whose values are written on the current stream after a long GPU sleep: a backend
    that does not wait for the caller's stream reads them before they exist."""
    x = torch.zeros_like(images, device="cuda")
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued before the copy
    x.copy_(images.cuda(), non_blocking=True)
    return x


def _ordering_check(session, images, reference):
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = session(_late_inputs(images), reference.target_classes)
        cams = got.cams.cpu()  # .cpu() waits for the current stream only
    errors = compare_with_reference(got.to("cpu"), reference)
    assert failing_figures(errors, "float32") == [], errors
    assert torch.allclose(cams, reference.cams, atol=1e-3)


def test_torch_backend_stream_ordering(vgg19, images, reference):
    session = GradCAMSession.from_model(vgg19, image_size=SIZE, num_targets=2, device="cuda")
    _ordering_check(session, images, reference)


@pytest.mark.skipif(
    "cuda" not in available_devices() or TENSORRT_EP not in ort.get_available_providers(),
    reason="needs onnxruntime-gpu with TensorRT",
)
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_onnxruntime_tensorrt(exports, images, reference, precision):
    """TensorRT picks its own kernels (TF32 in float32 on Ampere and newer): float16 limits."""
    session = GradCAMSession(exports[precision], device="cuda", tensorrt=True)
    assert session.providers[0] == "TensorrtExecutionProvider"
    check(session, images, reference, "float16")
    check(session, images[:3], eager_slice(reference, 3), "float16")


@needs_ort_cuda
def test_onnxruntime_stream_ordering(exports, images, reference):
    _ordering_check(GradCAMSession(exports["float32"], device="cuda"), images, reference)
