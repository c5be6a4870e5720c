"""CUDA parity and stream ordering: every backend and precision against the float32 eager
reference. Skipped without a GPU (CI has none); run on a GPU machine with `pytest -m cuda`
or benchmarks/gpu_check.py.

$GRADCAM_FAST_CUDA_EXPORTS, when set, is a folder holding float32.onnx and float16.onnx, exports
of the seeded VGG19 at 224 (benchmarks/gpu_check.py exports them once for its timings and these
tests); the tests export their own otherwise.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx
from gradcam_fast.check.compare import compare_with_reference, failing_figures
from gradcam_fast.format.result import GradCAMResult
from gradcam_fast.runtime.ort_backend import (
    available_devices,
    provider_load_error,
    tensorrt_available,
)

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
needs_ort_cuda = pytest.mark.skipif(
    "cuda" not in available_devices(), reason="needs onnxruntime-gpu's CUDA provider"
)
SIZE = 224
EXPORTS_ENV = "GRADCAM_FAST_CUDA_EXPORTS"


@pytest.fixture(scope="module")
def images():
    return torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference(vgg19, images):
    """Float32 eager Grad-CAM on the CPU: the eager reference for every CUDA path."""
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
    """The first `n` images of a result (fields that are None stay None)."""
    return GradCAMResult(**{k: None if v is None else v[:n] for k, v in vars(result).items()})


def first_targets(result, k):
    """The result for the first `k` of its K targets (fields without a K axis kept)."""
    with_k = {"cams", "cams_lowres", "target_classes", "gradients", "channel_weights"}
    return GradCAMResult(
        **{n: v[:, :k] if n in with_k and v is not None else v for n, v in vars(result).items()}
    )


@pytest.fixture(scope="module")
def exports(vgg19, tmp_path_factory):
    """precision -> path of an export, made on first use (one failing export fails only the tests
    of its precision); from $GRADCAM_FAST_CUDA_EXPORTS where that holds them."""
    shared = os.environ.get(EXPORTS_ENV)

    @functools.cache
    def export(precision: str) -> Path:
        if shared and (Path(shared) / f"{precision}.onnx").is_file():
            return Path(shared) / f"{precision}.onnx"
        root = tmp_path_factory.mktemp(f"cuda_{precision}")
        return export_onnx(
            vgg19,
            root / f"{precision}.onnx",
            image_size=SIZE,
            num_targets=2,
            precision=precision,
            validate=False,
        )

    return export


@needs_ort_cuda
@pytest.mark.parametrize("precision", ["float32", "float16"])
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_onnxruntime_cuda(exports, images, reference, precision, cuda_graphs):
    session = GradCAMSession(exports(precision), device="cuda", cuda_graphs=cuda_graphs)
    assert session.providers[0] == "CUDAExecutionProvider"
    reference = first_targets(reference, session.num_targets)
    first = check(session, images, reference, precision)
    kept = first.cams.clone()
    check(session, images[:3], eager_slice(reference, 3), precision)
    session(torch.randn_like(images).cuda(), reference.target_classes)  # same size again
    assert torch.equal(first.cams, kept), "results must not alias replayed buffers"


def _late_inputs(images: torch.Tensor) -> torch.Tensor:
    """Inputs whose values are written on the current stream after a long GPU sleep: a backend
    that does not wait for the caller's stream reads zeros. The host copy is made first, so the
    host never waits for the sleep (a pageable copy queued behind it would block the host)."""
    source = images.cuda()
    torch.cuda.current_stream().synchronize()
    x = torch.zeros_like(source)
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued before the copy
    x.copy_(source)  # device to device, behind the sleep: the host goes on at once
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
    "cuda" not in available_devices() or not tensorrt_available(),
    reason=f"needs ONNX Runtime's TensorRT provider: "
    f"{provider_load_error('TensorrtExecutionProvider')}",
)
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_onnxruntime_tensorrt(exports, images, reference, precision):
    """TensorRT picks its own kernels (TF32 in float32 on Ampere and newer): float16 limits."""
    session = GradCAMSession(exports(precision), device="cuda", tensorrt=True)
    assert session.providers[0] == "TensorrtExecutionProvider"
    reference = first_targets(reference, session.num_targets)
    check(session, images, reference, "float16")
    check(session, images[:3], eager_slice(reference, 3), "float16")


@needs_ort_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_onnxruntime_waits_for_the_callers_stream(exports, images, cuda_graphs):
    """The runner itself, not the session (whose input checks synchronize the host): inputs
    written late on a side stream must be waited for, as ONNX Runtime runs on its own stream.
    Without the runner's `current_stream().synchronize()` it reads zeros (or, with CUDA graphs,
    the previous call's zeros left in the static buffer) and this fails."""
    session = GradCAMSession(exports("float32"), device="cuda", cuda_graphs=cuda_graphs)
    runner = session._runner
    x = images.cuda()
    t = torch.full((x.shape[0], session.num_targets), -1, dtype=torch.int64, device="cuda")
    expected = [out.clone() for out in runner(x, t)]
    on_zeros = [out.clone() for out in runner(torch.zeros_like(x), t)]  # now in static buffers
    assert not torch.allclose(on_zeros[0], expected[0]), "zeros must be told from the images"
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        late = _late_inputs(images)
        assert not stream.query(), "the inputs must still be pending when the runner starts"
        got = runner(late, t)
    torch.cuda.synchronize()
    assert all(out.device.type == "cuda" for out in got), "outputs stay on the GPU (IOBinding)"
    for name, want, have in zip(runner.output_names, expected, got, strict=True):
        if want.is_floating_point():
            assert torch.allclose(have, want, rtol=1e-4, atol=1e-5), name
        else:
            assert torch.equal(have, want), name


@needs_ort_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_onnxruntime_threads_share_one_session(exports, images, cuda_graphs):
    """Several threads on one session (documented as safe): each gets its own images' result."""
    from concurrent.futures import ThreadPoolExecutor

    session = GradCAMSession(exports("float32"), device="cuda", cuda_graphs=cuda_graphs)
    batches = [images.cuda() * scale for scale in (1.0, -1.0, 0.5, 2.0)]
    alone = [session(x).cams.clone() for x in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda x: session(x).cams, batches * 3))
    torch.cuda.synchronize()
    for i, cams in enumerate(together):
        assert torch.allclose(cams, alone[i % 4], atol=1e-5), f"call {i}"
