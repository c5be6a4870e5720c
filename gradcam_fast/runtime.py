"""GradCAMSession: run an exported Grad-CAM model in ONNX Runtime with torch tensors in and out.

Inputs and outputs are bound by pointer (IOBinding) to torch tensors on the session's device, so
nothing is copied through NumPy; post-processing runs on the same device. Each thread gets its
own bindings and output buffers (per batch size), so one session can serve many threads.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from .inputs import as_image_batch, as_targets
from .metadata import INPUT_NAMES, OUTPUT_NAMES, ModelMetadata, NotAGradCAMModel
from .postprocess import gradcam_lowres, upsample_normalize
from .result import GradCAMResult

__all__ = ["GradCAMSession", "available_devices"]

log = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
_NP_DTYPES = {torch.float32: np.float32, torch.int64: np.int64}


def available_devices() -> list[str]:
    """Devices a session can use here: "cpu", plus "cuda" when ONNX Runtime has the CUDA provider
    (the onnxruntime-gpu package) and torch sees a GPU."""
    devices = ["cpu"]
    if CUDA_EP in ort.get_available_providers() and torch.cuda.is_available():
        devices.append("cuda")
    return devices


def cpu_count() -> int:
    """Cores this process may run on (respects affinity masks, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _providers_for(device: torch.device, cuda_options: dict[str, str]) -> list:
    if device.type == "cpu":
        return [CPU_EP]
    if CUDA_EP not in ort.get_available_providers():
        raise RuntimeError(
            "device='cuda' needs ONNX Runtime's CUDA execution provider, which this onnxruntime "
            f"lacks (it has {ort.get_available_providers()}): uninstall onnxruntime and install "
            "onnxruntime-gpu (pip install 'gradcam_fast[gpu]'), or use device='cpu'"
        )
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device; use device='cpu'")
    options = {"device_id": str(device.index or 0), **cuda_options}
    return [(CUDA_EP, options), CPU_EP]


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if "cuda" in available_devices() else "cpu")
    dev = torch.device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device("cuda", dev.index or 0) if dev.type == "cuda" else dev


def _open(path: Path, options: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}: export one with `gradcam-fast export`")
    if path.stat().st_size == 0:
        raise NotAGradCAMModel(f"{path} is empty, not an ONNX model: export it again")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/InvalidGraph types
        if "CUDA" in str(exc) and CUDA_EP in str(providers):
            raise RuntimeError(f"could not start the CUDA provider for {path}: {exc}") from None
        raise NotAGradCAMModel(
            f"{path} is not a readable ONNX model (truncated, corrupt or another format): "
            f"{str(exc).splitlines()[0]}"
        ) from None


class _Buffers:
    """One thread's IOBinding and output tensors for one batch size."""

    def __init__(self, session: GradCAMSession, batch: int):
        self.binding = session._session.io_binding()
        self.outputs = {
            name: torch.empty((batch, *shape), dtype=dtype, device=session.device)
            for name, (shape, dtype) in session._output_specs.items()
        }
        for name, tensor in self.outputs.items():
            session._bind(self.binding.bind_output, name, tensor)


class GradCAMSession:
    """A gradcam_fast ONNX model ready to run: `session(images, targets) -> GradCAMResult`.

    `device` is "cpu", "cuda", "cuda:N" or "auto" (CUDA when ONNX Runtime and torch both have it,
    else the CPU; `session.device` and `session.providers` say which). Asking for CUDA where it
    cannot run raises instead of falling back. Safe to call from several threads at once.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        *,
        intra_op_threads: int | None = None,
        max_batch_size: int | None = None,
        cuda_options: dict[str, str] | None = None,
    ):
        self.path = Path(path)
        self.device = _resolve_device(device)
        self.max_batch_size = max_batch_size
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = intra_op_threads or cpu_count()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = _providers_for(self.device, {"use_tf32": "0", **(cuda_options or {})})
        self._session = _open(self.path, options, providers)
        self.providers: list[str] = self._session.get_providers()
        if self.device.type == "cuda" and self.providers[0] != CUDA_EP:
            raise RuntimeError(
                f"ONNX Runtime did not start its CUDA provider (got {self.providers}); check that "
                "the CUDA and cuDNN libraries onnxruntime-gpu needs are installed"
            )
        props = self._session.get_modelmeta().custom_metadata_map
        self.metadata = ModelMetadata.from_props(props, source=str(self.path))
        self._check_io()
        self._local = threading.local()

    def _check_io(self) -> None:
        inputs = tuple(i.name for i in self._session.get_inputs())
        outputs = self._session.get_outputs()
        if inputs != INPUT_NAMES or tuple(o.name for o in outputs) != OUTPUT_NAMES:
            raise NotAGradCAMModel(
                f"{self.path} has inputs {inputs} and outputs {[o.name for o in outputs]}, "
                f"not the gradcam_fast contract {INPUT_NAMES} -> {OUTPUT_NAMES}"
            )
        dtypes = {"tensor(float)": torch.float32, "tensor(int64)": torch.int64}
        self._output_specs = {o.name: (tuple(o.shape[1:]), dtypes[o.type]) for o in outputs}

    def _bind(self, bind, name: str, tensor: torch.Tensor) -> None:
        bind(
            name,
            tensor.device.type,
            tensor.device.index or 0,
            _NP_DTYPES[tensor.dtype],
            tuple(tensor.shape),
            tensor.data_ptr(),
        )

    def _buffers(self, batch: int) -> _Buffers:
        cache = self._local.__dict__.setdefault("buffers", {})
        if batch not in cache:
            cache[batch] = _Buffers(self, batch)
        return cache[batch]

    @property
    def image_size(self) -> int:
        return self.metadata.image_size

    @property
    def num_targets(self) -> int:
        return self.metadata.num_targets

    @property
    def categories(self) -> tuple[str, ...]:
        return self.metadata.categories

    def __call__(
        self,
        images: torch.Tensor | np.ndarray,
        targets: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    ) -> GradCAMResult:
        """Grad-CAM maps for `images` [B,3,S,S] (or [3,S,S]), normalized with the model's mean/std.

        `targets`: None (the top K classes), an int (that class for every image, K = 1), B ints
        (K = 1), or [B, K]; t >= 0 is a class, -r the r-th highest logit. Every tensor of the
        result is on `self.device` and owned by the caller.
        """
        meta = self.metadata
        x = as_image_batch(images, meta.image_size, self.device)
        t = as_targets(targets, x.shape[0], meta.num_targets, meta.num_classes)
        t = t.to(self.device)
        step = self.max_batch_size or x.shape[0]
        parts = [self._run(x[i : i + step], t[i : i + step]) for i in range(0, x.shape[0], step)]
        if len(parts) == 1:
            return parts[0]
        return GradCAMResult(
            **{k: torch.cat([getattr(p, k) for p in parts]) for k in vars(parts[0])}
        )

    def _run(self, images: torch.Tensor, targets: torch.Tensor) -> GradCAMResult:
        buffers = self._buffers(images.shape[0])
        binding = buffers.binding
        self._bind(binding.bind_input, "images", images)
        self._bind(binding.bind_input, "targets", targets)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # inputs written before ORT reads
        self._session.run_with_iobinding(binding)
        out = buffers.outputs
        activations = out["activations"].clone()
        gradients = out["gradients"].clone()
        lowres = gradcam_lowres(activations, gradients)
        return GradCAMResult(
            cams=upsample_normalize(lowres, self.metadata.image_size),
            cams_lowres=lowres,
            target_classes=out["target_classes"].clone(),
            logits=out["logits"].clone(),
            activations=activations,
            gradients=gradients,
        )

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"GradCAMSession({str(self.path)!r}, arch={m.arch}, layer={m.target_layer}, "
            f"size={m.image_size}, K={m.num_targets}, device={self.device}, providers={self.providers})"
        )
