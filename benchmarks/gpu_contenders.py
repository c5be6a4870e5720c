"""The GPU contenders, most important first: the plain forward (the floor), the eager hook
(float32, float16 under autocast), the torch backend and ONNX Runtime's CUDA provider (float32 /
float16, with and without CUDA graphs), the levers that may push the floor down (prefer_nhwc,
cuDNN EXHAUSTIVE search, CUDA graphs, NCHW), the TF32 rows and TensorRT. Each is a
`ContenderSpec` whose factory returns `run(images, targets)`; benchmarks/gpu_check.py times them."""

from __future__ import annotations

import copy
from pathlib import Path

import onnxruntime as ort
import torch

from benchmarks.contenders import ContenderSpec

__all__ = ["EAGER_FP32", "FLOOR", "SHORT", "SIZE", "Skip", "plan"]

SIZE = 224
SHORT = {"float32": "fp32", "tf32": "tf32", "float16": "fp16"}
EAGER_FP32 = "eager hook fp32"
FLOOR = "plain forward (floor)"


def _no_tf32(fn):
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        return fn()
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def _autocast(fn):
    with torch.autocast("cuda", dtype=torch.float16):
        return fn()


def _floor(net, precision: str, channels_last: bool = True, graphs: bool = False):
    """The plain forward of `net` (no Grad-CAM): run(images, targets) ignoring the targets."""
    half = precision == "float16"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(net).to(dtype=torch.float16 if half else torch.float32, memory_format=fmt)

    def forward(x):
        with torch.inference_mode():
            if precision == "float32":
                return _no_tf32(lambda: net(x))
            return net(x)

    def prepare(images):
        return (images.half() if half else images).contiguous(memory_format=fmt)

    if not graphs:
        return lambda images, targets: forward(prepare(images))
    captured: dict[int, tuple] = {}

    def replay(images, targets):
        b = images.shape[0]
        if b not in captured:
            static = prepare(images).clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    forward(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = forward(static)
            captured[b] = (graph, static, out)
        graph, static, out = captured[b]
        static.copy_(prepare(images))
        graph.replay()
        return out

    return replay


def plan(
    model, exports: dict[str, Path | Exception], ort_cuda: bool, tensorrt: str | None, quick: bool
) -> list[ContenderSpec]:
    """Every contender, most important first (a spent budget skips the tail). `exports` maps a
    precision to its ONNX file or the error its export raised; `tensorrt` is None where
    ONNX Runtime's TensorRT provider loads, else why not."""
    from gradcam_fast import GradCAMSession, eager_gradcam

    def eager(precision):
        if precision == "float32":
            return lambda _: lambda x, t: _no_tf32(lambda: eager_gradcam(model, x, t))
        if precision == "float16":
            return lambda _: lambda x, t: _autocast(lambda: eager_gradcam(model, x, t))
        return lambda _: lambda x, t: eager_gradcam(model, x, t)

    def torch_backend(precision, graphs):
        name = f"torch backend {SHORT[precision]}" + (" + CUDA graphs" if graphs else "")
        make = lambda _: GradCAMSession.from_model(  # noqa: E731
            model, image_size=SIZE, device="cuda", precision=precision, cuda_graphs=graphs
        )
        return ContenderSpec(name, make, precision)

    def session(precision, **options):
        path = exports[precision]
        if isinstance(path, Exception):
            raise RuntimeError(f"the {precision} export failed: {path}")
        if not ort_cuda:
            raise RuntimeError(f"onnxruntime {ort.__version__} has no usable CUDA provider")
        return GradCAMSession(path, device="cuda", **options)

    def onnxruntime(precision, graphs, label="", **options):
        name = f"onnxruntime CUDA {SHORT[precision]}" + (" + CUDA graphs" if graphs else "") + label
        return ContenderSpec(
            name, lambda _: session(precision, cuda_graphs=graphs, **options), precision
        )

    def floor(precision, label="", **kw):
        return ContenderSpec(
            FLOOR + label, lambda _: _floor(model, precision, **kw), precision, True
        )

    both = (True,) if quick else (False, True)
    nhwc, exhaustive = {"cuda_options": {"prefer_nhwc": "1"}}, {"cudnn_search": "EXHAUSTIVE"}
    contenders = [
        floor("float32"),
        floor("float16"),
        ContenderSpec(EAGER_FP32, eager("float32"), "float32"),
        ContenderSpec("eager hook fp16 (autocast)", eager("float16"), "float16"),
        torch_backend("float16", True),
        torch_backend("float32", True),
        *(onnxruntime(p, g) for p in ("float16", "float32") for g in both),
        *(() if quick else (torch_backend("float16", False), torch_backend("float32", False))),
        # levers on the floor: NHWC kernels, cuDNN's exhaustive search, graphs, channels-last
        onnxruntime("float16", True, " + prefer_nhwc", **nhwc),
        onnxruntime("float16", True, " + EXHAUSTIVE", **exhaustive),
        onnxruntime("float16", True, " + prefer_nhwc + EXHAUSTIVE", **exhaustive, **nhwc),
        floor("float16", " + CUDA graphs", graphs=True),
        floor("float16", " NCHW", channels_last=False),
        floor("tf32"),
        ContenderSpec("eager hook (torch defaults: TF32 convs)", eager("tf32"), "tf32"),
        torch_backend("tf32", True),
    ]
    for precision in ("float32", "float16"):
        if tensorrt is None:
            make = lambda _, p=precision: session(p, tensorrt=True)  # noqa: E731
        else:
            make = _skip(f"TensorRT does not load here: {tensorrt}")
        checked_as = "tf32" if precision == "float32" else precision  # TensorRT may use TF32
        contenders.append(
            ContenderSpec(f"onnxruntime TensorRT {SHORT[precision]}", make, checked_as)
        )
    return contenders


class Skip(Exception):
    """A contender that cannot run here for a known reason (recorded as skipped, not failed)."""


def _skip(reason: str):
    def make(_):
        raise Skip(reason)

    return make
