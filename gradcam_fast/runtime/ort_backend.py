"""ONNX Runtime execution of an exported model, with torch tensors bound in and out by pointer.

Inputs and outputs are bound through IOBinding to torch tensors on the session's device, so
nothing goes through NumPy. Each thread gets its own binding (an IOBinding must not be shared
between concurrent runs), and each call allocates the output tensors it returns, which ONNX
Runtime fills in place: no copy, and nothing cached per batch size (a per-thread cache kept
115 MiB alive per thread after batch sizes 1..16 of a small model). With CUDA graphs the
buffers are static, one set per batch size, and runs are serialized, as graph replay requires.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..format.metadata import INPUT_NAMES, ModelMetadata, NotAGradCAMModel
from .cpu_choice import cpu_count
from .providers import (
    CPU_EP,
    CUDA_EP,
    TENSORRT_EP,
    available_devices,
    cuda_provider_options,
    provider_load_error,
    providers_for,
    tensorrt_available,
    tensorrt_provider_options,
    what_is_missing,
)

__all__ = [
    "CPU_EP",
    "CUDA_EP",
    "TENSORRT_EP",
    "OrtRunner",
    "available_devices",
    "cuda_provider_options",
    "provider_load_error",
    "session_options",
    "tensorrt_available",
    "tensorrt_provider_options",
]

_NP_DTYPES = {torch.float32: np.float32, torch.int64: np.int64, torch.uint8: np.uint8}
_TORCH_DTYPES = {"tensor(float)": torch.float32, "tensor(int64)": torch.int64}


def session_options(
    intra_op_threads: int | None = None, low_memory: bool = False
) -> ort.SessionOptions:
    """The SessionOptions of every session: all graph optimizations, intra-op threads matched
    to the cores, sequential execution. Benchmarks use it for the plain-inference floor too."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads or cpu_count()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if low_memory:
        # Prepacking keeps a second, blocked copy of every Gemm/Conv weight (about the size of
        # the weights again); the arena keeps activation memory after a run. With an
        # external-data model the weights are then memory-mapped, not copied.
        options.enable_cpu_mem_arena = False
        options.add_session_config_entry("session.disable_prepacking", "1")
    return options


def _open(path: Path, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}: export one with `gradcam-fast export`")
    if path.stat().st_size == 0:
        raise NotAGradCAMModel(f"{path} is empty, not an ONNX model: export it again")
    wanted = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
    try:
        # enable_fallback=0: without it, a provider failing at creation turns into a session on
        # the fall-back providers (the CPU) with the error only printed
        session = ort.InferenceSession(str(path), options, providers=providers, enable_fallback=0)
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/InvalidGraph types
        if wanted != CPU_EP and not _model_error(exc):
            raise RuntimeError(
                f"could not start {wanted} for {path}: {exc}. {what_is_missing(wanted, str(exc))}"
            ) from None
        raise NotAGradCAMModel(
            f"{path} is not a readable ONNX model (truncated, corrupt or another format): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    session.disable_fallback()  # a failing CUDA run must raise, not rerun on the CPU
    return session


def _model_error(exc: Exception) -> bool:
    """Whether session creation failed on the model file itself, not on a provider."""
    text = str(exc)
    gpu = any(word in text for word in ("CUDA", "CUDNN", "cuDNN", "TensorRT", "Tensorrt"))
    kinds = ("InvalidProtobuf", "InvalidGraph", "NoSuchFile", "NoModel")
    return not gpu and (type(exc).__name__ in kinds or "Load model from" in text)


class _Buffers:
    """CUDA graphs: one batch size's binding with static inputs and outputs (graph replay reads
    and writes fixed addresses; new inputs are copied in) and its `gpu_graph_id`."""

    def __init__(self, runner: OrtRunner, batch: int, graph_id: int):
        self.binding = runner.session.io_binding()
        self.run_options = ort.RunOptions()
        self.run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self.inputs = {
            name: torch.zeros((batch, *shape), dtype=dtype, device=runner.device)
            for name, (shape, dtype) in runner.input_specs.items()
        }
        self.outputs = {
            name: torch.empty((batch, *shape), dtype=dtype, device=runner.device)
            for name, (shape, dtype) in runner.output_specs.items()
        }
        for name, tensor in self.inputs.items():
            _bind(self.binding.bind_input, name, tensor)
        for name, tensor in self.outputs.items():
            _bind(self.binding.bind_output, name, tensor)


def _bind(bind, name: str, tensor: torch.Tensor) -> None:
    bind(
        name,
        tensor.device.type,
        tensor.device.index or 0,
        _NP_DTYPES[tensor.dtype],
        tuple(tensor.shape),
        tensor.data_ptr(),
    )


class OrtRunner:
    """The ONNX Runtime runner (`protocols.Runner`) of a gradcam_fast model file, around an
    `onnxruntime.InferenceSession`: images, targets -> raw outputs."""

    def __init__(
        self,
        path: Path,
        device: torch.device,
        *,
        intra_op_threads: int | None = None,
        cudnn_search: str = "HEURISTIC",
        cuda_graphs: bool = False,
        cuda_options: dict[str, str] | None = None,
        low_memory: bool = False,
        tensorrt_options: dict[str, str] | None = None,
    ):
        if cuda_graphs and device.type != "cuda":
            raise ValueError("cuda_graphs=True needs device='cuda'")
        if cuda_graphs and tensorrt_options is not None:
            raise ValueError(
                "cuda_graphs=True is a CUDA-provider option (static buffers per batch size) and "
                "cannot be combined with tensorrt=True; use one of them"
            )
        self.device = device
        self.cuda_graphs = cuda_graphs
        options = session_options(intra_op_threads, low_memory)
        cuda = (
            cuda_provider_options(
                device, cudnn_search=cudnn_search, cuda_graphs=cuda_graphs, extra=cuda_options
            )
            if device.type == "cuda"
            else {}
        )
        providers = providers_for(device, cuda, None, tensorrt_options)
        if tensorrt_options is not None:  # where TensorRT keeps its engines
            Path(tensorrt_options["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        self.session = _open(path, options, providers)
        self.providers: list[str] = self.session.get_providers()
        wanted = TENSORRT_EP if tensorrt_options is not None else CUDA_EP
        if device.type == "cuda" and self.providers[0] != wanted:
            # ONNX Runtime builds the session without a provider whose library fails to load
            raise RuntimeError(
                f"ONNX Runtime did not start its {wanted} (got {self.providers}): "
                f"{what_is_missing(wanted)}; onnxruntime-gpu needs the driver, CUDA and cuDNN "
                "(and for TensorRT, TensorRT) libraries (import torch before creating the "
                "session, or call onnxruntime.preload_dlls())"
            )
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, source=str(path))
        if device.type == "cuda" and self.metadata.precision == "int8":
            raise ValueError(
                f"{path} is an int8 model, which runs on the CPU only: ONNX Runtime's CUDA "
                "provider has no int8 convolution (QLinearConv) and would run each one on the "
                "CPU with copies in between. On a GPU use a float16 export (`export --precision float16`) or "
                "GradCAMSession.from_model(..., precision='float16')"
            )
        self._check_io(path)
        self._local = threading.local()
        self._shared: dict[int, _Buffers] = {}  # CUDA graphs: one static set per batch size
        self._lock = threading.Lock()

    def _check_io(self, path: Path) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        in_names, out_names = tuple(i.name for i in inputs), tuple(o.name for o in outputs)
        self.output_names = self.metadata.output_names
        if in_names != INPUT_NAMES or out_names != self.output_names:
            raise NotAGradCAMModel(
                f"{path} has inputs {in_names} and outputs {out_names}, not the gradcam_fast "
                f"contract {INPUT_NAMES} -> {self.output_names}"
            )
        in_types = {
            "tensor(float)": torch.float32,
            "tensor(int64)": torch.int64,
            "tensor(uint8)": torch.uint8,
        }
        self.input_specs = {i.name: (tuple(i.shape[1:]), in_types[i.type]) for i in inputs}
        self.output_specs = {o.name: (tuple(o.shape[1:]), _TORCH_DTYPES[o.type]) for o in outputs}

    def _buffers(self, batch: int) -> _Buffers:
        """CUDA graphs: the static binding and buffers for this batch size (under the lock)."""
        if batch not in self._shared:
            self._shared[batch] = _Buffers(self, batch, graph_id=len(self._shared) + 1)
        return self._shared[batch]

    def _binding(self) -> ort.IOBinding:
        """This thread's binding; inputs and outputs are bound again on every call."""
        binding = getattr(self._local, "binding", None)
        if binding is None:
            binding = self._local.binding = self.session.io_binding()
        return binding

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run one batch; returns (logits, target_classes, activations, and the gradients or,
        for the channel-weights model, the channel weights), owned by the caller (allocated for
        this call; copies of the static buffers with CUDA graphs)."""
        if self.cuda_graphs:
            with self._lock:
                return self._run(images, targets)
        return self._run(images, targets)

    def _run(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = images.shape[0]
        if self.cuda_graphs:
            buffers = self._buffers(batch)
            buffers.inputs["images"].copy_(images)
            buffers.inputs["targets"].copy_(targets)
            binding, run_options, out = buffers.binding, buffers.run_options, buffers.outputs
        else:
            binding, run_options = self._binding(), None
            _bind(binding.bind_input, "images", images)
            _bind(binding.bind_input, "targets", targets)
            out = {
                name: torch.empty((batch, *shape), dtype=dtype, device=self.device)
                for name, (shape, dtype) in self.output_specs.items()
            }
            for name, tensor in out.items():
                _bind(binding.bind_output, name, tensor)
        if self.device.type == "cuda":
            # ONNX Runtime runs on its own stream: the inputs must be written before it reads.
            # It synchronizes its stream before run_with_iobinding returns.
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding, run_options)
        if self.cuda_graphs:  # the next replay overwrites the static buffers
            return tuple(out[name].clone() for name in self.output_names)
        return tuple(out[name] for name in self.output_names)
