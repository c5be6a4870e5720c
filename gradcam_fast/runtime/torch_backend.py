"""The same GradCAMGraph run natively in torch: the fast path where onnxruntime-gpu is absent.

On CUDA it can capture one CUDA graph per batch size (static input and output buffers, replayed
under a lock), run the body below the target layer in float16 (the head stays float32, see
GradCAMGraph.forward) and keeps TF32 off on the strict float32 path. On the CPU the body can run
in bfloat16 (oneDNN), meant for CPUs with native bfloat16 (AVX512-BF16 or AMX; elsewhere oneDNN
emulates it and a warning says it will be slow). The body runs channels-last by default.

On this project's Zen 4 CPU bfloat16 is slower than float32: torch's bfloat16 GEMM reaches 142
GFLOP/s against 261 in float32, and VGG19's body in bfloat16 is slower than in float32 however
its weights are laid out (`python -m benchmarks.bf16_probe`; benchmarks/RESULTS.md). It pays where bfloat16 has
more throughput than float32 (AMX on Intel Xeon).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
import threading
import warnings

import torch
from torch import nn

from ..core.graph import GradCAMGraph

__all__ = ["PRECISIONS", "TorchRunner"]

# "tf32": float32 tensors with TensorFloat-32 convolutions and matmuls on CUDA (what torch does
# by default for convolutions); "float32" keeps TF32 off for results within 1e-4 of the CPU.
# "bfloat16": the body in bfloat16 (meant for CPUs with AVX512-BF16 or AMX; see native_bfloat16).
PRECISIONS = {
    "float32": torch.float32,
    "tf32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@functools.cache
def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16 on x86, read from
    /proc/cpuinfo on Linux); elsewhere, whether oneDNN supports bfloat16 at all."""
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((line for line in f if line.startswith("flags")), "").split()
        except OSError:
            flags = []
        if flags:
            return "avx512_bf16" in flags or "amx_bf16" in flags
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# torch's TF32 and cuDNN flags are process-wide: CUDA calls that set them hold this lock, so two
# sessions of different precision in two threads never run under each other's flags.
_FLAGS_LOCK = threading.RLock()


@contextlib.contextmanager
def _cuda_flags(strict_fp32: bool, benchmark: bool):
    """cuDNN autotuning on, and TF32 off for convolutions and matmuls when `strict_fp32` (on
    otherwise); the caller's flags are restored after."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    with _FLAGS_LOCK:
        saved = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark)
        cudnn.benchmark = benchmark
        cudnn.allow_tf32 = matmul.allow_tf32 = not strict_fp32
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = saved


class TorchRunner:
    """The torch runner (`protocols.Runner`): a copy of the model's GradCAMGraph on `device`,
    images, targets -> raw outputs.

    Returns float32 (logits, target_classes, activations, gradients) tensors owned by the
    caller. `cuda_graphs` captures one graph per batch size on first use (CUDA only).
    `metadata` describes the graph as an export at `image_size` would.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None,
        num_targets: int,
        device: torch.device,
        precision: str = "float32",
        cuda_graphs: bool = False,
        cudnn_benchmark: bool = True,
        channels_last: bool | None = None,
        image_size: int = 224,
    ):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if cuda_graphs and device.type != "cuda":
            raise ValueError("cuda_graphs=True needs device='cuda'")
        cpu_bf16 = precision == "bfloat16" and device.type == "cpu"
        if cpu_bf16 and not native_bfloat16():
            warnings.warn(
                "precision='bfloat16' on a CPU without native bfloat16 (no AVX512-BF16 or AMX): "
                "oneDNN emulates it, which runs slower than float32; use precision='float32'",
                RuntimeWarning,
                stacklevel=3,
            )
        self.device = device
        self.dtype = PRECISIONS[precision]
        self.precision = precision
        model = copy.deepcopy(model).to(device=device).eval()
        self.graph = GradCAMGraph(model, target_layer, num_targets, image_size=image_size)
        self.graph.set_body_dtype(self.dtype)
        self.metadata = self.graph.metadata(image_size, precision=precision)
        self.providers = [f"torch ({precision}{', CUDA graphs' if cuda_graphs else ''})"]
        # NHWC is cuDNN's native layout for tensor-core convolutions, and oneDNN's fastest on
        # the CPU (VGG19's body 1.37x faster at batch 8 in float32 here: benchmarks/bf16_probe).
        if channels_last is None:
            channels_last = True
        self.channels_last = channels_last
        if self.channels_last:
            for module in self.graph.body_modules():
                module.to(memory_format=torch.channels_last)
        self.cuda_graphs = cuda_graphs
        self.cudnn_benchmark = cudnn_benchmark
        self._captured: dict[int, tuple] = {}
        self._lock = threading.Lock()  # captured graphs share static buffers

    def _context(self) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        if self.device.type == "cuda":
            strict = self.precision == "float32"
            stack.enter_context(_cuda_flags(strict, self.cudnn_benchmark))
        return stack

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with self._context():
            if not self.cuda_graphs:
                # fresh float32 tensors, contiguous (the body may run channels-last)
                return tuple(t.contiguous() for t in self.graph(images, targets))
            with self._lock:
                static_in, static_t, graph, static_out = self._capture(images, targets)
                static_in.copy_(images)
                static_t.copy_(targets)
                graph.replay()
                # the next replay overwrites the static outputs
                return tuple(out.clone(memory_format=torch.contiguous_format) for out in static_out)

    def _capture(self, images: torch.Tensor, targets: torch.Tensor) -> tuple:
        batch = images.shape[0]
        if batch not in self._captured:
            static_in = torch.zeros_like(images)
            static_t = torch.full_like(targets, -1)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm up cuDNN's algorithm choice before capture
                    self.graph(static_in, static_t)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.graph(static_in, static_t)
            self._captured[batch] = (static_in, static_t, graph, static_out)
        return self._captured[batch]
