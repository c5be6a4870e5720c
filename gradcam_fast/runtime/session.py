"""GradCAMSession: Grad-CAM from an exported model (ONNX Runtime or OpenVINO) or a torch model
(torch backend).

The session checks inputs, runs the backend, and turns activations and gradients into maps with
batched torch ops on the same device. Results are owned by the caller. Safe to call from several
threads at once (each thread gets its own ONNX Runtime binding and buffers, or its own OpenVINO
infer request). onnxruntime, an optional extra, is imported when a session opens a file, so
`GradCAMSession.from_model` runs without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..cams.methods import cam_lowres, check_method
from ..cams.postprocess import weighted_sum
from ..check.finite import check_finite
from ..format.inputs import as_image_batch, as_pixel_batch, as_targets
from ..format.metadata import ModelMetadata
from ..format.protocols import Runner
from ..format.result import GradCAMResult
from .backends import open_runner
from .cachedir import cache_dir
from .cpu_choice import Choice, cpu_count
from .smooth import aug_smooth_cams

if TYPE_CHECKING:
    from .ort_backend import OrtRunner

__all__ = ["GradCAMSession", "available_devices", "cpu_count"]

log = logging.getLogger(__name__)


def _resolve_device(device: str | torch.device, cuda_usable: bool) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda", 0) if cuda_usable else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device("cuda", dev.index or 0) if dev.type == "cuda" else dev


def _method_for(meta: ModelMetadata, method: str | None) -> str:
    """The method a call computes: `method`, or by default the in-graph maps' method (a model
    exported with maps) or "gradcam"; refuses what the model cannot give."""
    if method is None:
        return meta.method if meta.maps else "gradcam"
    check_method(method)
    if meta.maps and method != meta.method:
        raise ValueError(
            f"this model computes {meta.method!r} maps in its graph (exported with maps=True, "
            f"method={meta.method!r}), not {method!r}: call it with method={meta.method!r} (or "
            "none), or use a model exported without maps, whose maps the session computes"
        )
    if meta.channel_weights_only and method != "gradcam":
        raise ValueError(
            f"method {method!r} needs the gradients, and this is the channel-weights model "
            "(exported with channel_weights_only=True, formerly gradients=False; Grad-CAM's "
            "channel weights only): use method='gradcam' or a model exported with gradients"
        )
    return method


def available_devices() -> list[str]:
    """Devices a session can use here: "cpu", plus "cuda" when ONNX Runtime's CUDA provider
    loads (`providers.available_devices`). Imports onnxruntime, which `from_model` never needs."""
    from .providers import available_devices as onnxruntime_devices

    return onnxruntime_devices()


def _tensorrt_options(
    device: torch.device, tensorrt: bool, overrides: dict[str, str] | None
) -> dict[str, str] | None:
    if not tensorrt:
        if overrides:
            raise ValueError("tensorrt_options given without tensorrt=True")
        return None
    from .providers import tensorrt_provider_options

    return tensorrt_provider_options(device, cache_dir() / "tensorrt", extra=overrides)


class GradCAMSession:
    """A Grad-CAM model ready to run: `session(images, targets) -> GradCAMResult`.

    `GradCAMSession(path)` runs an exported gradcam_fast ONNX model in ONNX Runtime;
    `GradCAMSession.from_model(model, ...)` runs the same graph natively in torch. `device` is
    "cpu", "cuda", "cuda:N" or "auto" (CUDA when usable, else the CPU; `session.device` and
    `session.providers` say which). Asking for CUDA where it cannot run raises instead of
    falling back. `max_batch_size` splits larger batches into chunks (bounded memory).
    `runner` instead of a path runs another backend (`from_model` passes a `TorchRunner`).
    ONNX Runtime options: `intra_op_threads` (default: the cores this process may use),
    `cudnn_search` ("HEURISTIC", "EXHAUSTIVE" or "DEFAULT"), `cuda_graphs` (one graph per batch
    size; calls are then serialized), `cuda_options` (raw CUDA EP options), `low_memory` (no
    weight prepacking and no CPU arena: about one copy of the weights less, see
    benchmarks/RESULTS.md for its cost; pair it with `export_onnx(..., external_data=True)`),
    `tensorrt` (ONNX Runtime's TensorRT provider ahead of the CUDA one, engines cached under
    `cache_dir()/tensorrt`; `tensorrt_options` overrides its options, see
    `ort_backend.tensorrt_provider_options`).

    `backend`: "onnxruntime" (default), "openvino" (CPU; `pip install 'gradcam_fast[openvino]'`)
    or "auto" (from the CPU's features, `cpu_choice`). `precision`: None (the file's own, exact
    float32 for a float32 file), "float32", "bfloat16" (OpenVINO's bf16 inference), "int8" (of
    a float32 file: needs `calibration`, a folder of at least 8 photos or a tensor of them;
    the backend's int8 model is made, validated against float32 and cached per calibration set;
    `calibration_method` is ONNX Runtime's: minmax, percentile, entropy) or "auto" (the
    fastest whose fidelity was measured to hold on this CPU). `session.choice` says what ran and
    why (`backends.py`). OpenVINO options: `intra_op_threads` (its INFERENCE_NUM_THREADS),
    `performance_hint` ("LATENCY" or "THROUGHPUT"), `num_streams`, `compile_cache` (compiled
    models kept under `cache_dir()/openvino`).
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        device: str | torch.device = "auto",
        *,
        intra_op_threads: int | None = None,
        max_batch_size: int | None = None,
        cudnn_search: str = "HEURISTIC",
        cuda_graphs: bool = False,
        cuda_options: dict[str, str] | None = None,
        low_memory: bool = False,
        tensorrt: bool = False,
        tensorrt_options: dict[str, str] | None = None,
        runner: Runner | None = None,
        backend: str = "onnxruntime",
        precision: str | None = None,
        calibration=None,
        calibration_method: str = "minmax",
        performance_hint: str = "LATENCY",
        num_streams: int | None = None,
        compile_cache: bool = True,
    ):
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if (path is None) == (runner is None):
            raise ValueError("give a model file (path) or a runner, not both or neither")
        self.choice: Choice | None = None
        if runner is None:
            device = _resolve_device(device, "cuda" in available_devices())

            def ort(file: Path) -> OrtRunner:
                from .ort_backend import OrtRunner  # onnxruntime: only for a file it runs

                return OrtRunner(
                    file,
                    device,
                    intra_op_threads=intra_op_threads,
                    cudnn_search=cudnn_search,
                    cuda_graphs=cuda_graphs,
                    cuda_options=cuda_options,
                    low_memory=low_memory,
                    tensorrt_options=_tensorrt_options(device, tensorrt, tensorrt_options),
                )

            def openvino(file: Path, ov_precision: str) -> Runner:
                from .openvino_backend import OpenVinoRunner

                return OpenVinoRunner(
                    file,
                    device,
                    precision=ov_precision,
                    threads=intra_op_threads,
                    hint=performance_hint,
                    num_streams=num_streams,
                    cache=compile_cache,
                )

            runner, self.choice = open_runner(
                Path(path),
                device,
                backend,
                precision,
                calibration=calibration,
                calibration_method=calibration_method,
                ort=ort,
                openvino=openvino,
                open_session=lambda file, **kw: GradCAMSession(file, device="cpu", **kw),
            )
        self.path: Path | None = None if path is None else Path(path)
        self.device: torch.device = runner.device
        self.metadata: ModelMetadata = runner.metadata
        self.providers: list[str] = runner.providers
        self.max_batch_size = max_batch_size
        self._runner = runner

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        *,
        target_layer: str | None = None,
        image_size: int = 224,
        num_targets: int = 1,
        device: str | torch.device = "auto",
        precision: str = "float32",
        cuda_graphs: bool = False,
        max_batch_size: int | None = None,
    ) -> GradCAMSession:
        """The torch backend: `GradCAMGraph` of a copy of `model`, run natively in torch, behind
        the same API. `precision` "float16" (CUDA) or "bfloat16" (CPUs with AVX512-BF16 or
        AMX, warned as slow elsewhere) runs the body below the target layer in half precision
        (float32 head, inputs and results); `cuda_graphs` captures one CUDA graph per batch
        size."""
        from .torch_backend import TorchRunner

        runner = TorchRunner(
            model,
            target_layer,
            num_targets,
            _resolve_device(device, torch.cuda.is_available()),
            precision,
            cuda_graphs,
            image_size=image_size,
        )
        return cls(None, runner=runner, max_batch_size=max_batch_size)

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
        *,
        method: str | None = None,
        aug_smooth: bool = False,
    ) -> GradCAMResult:
        """Grad-CAM maps for `images` [B,3,S,S] (or [3,S,S]), normalized with the model's mean/std;
        for a model exported with raw_pixels, uint8 pixels [B,S,S,3] (or [S,S,3]) as decoded.

        `targets`: None (the top K classes), an int (that class for every image, K = 1), B ints
        (K = 1), or [B, K]; t >= 0 is a class, -r the r-th highest logit. `method`: a name in
        `methods.METHODS` (gradcam, gradcam++, xgradcam, hirescam, gradcamelementwise, layercam,
        eigencam); None: "gradcam", or for a model exported with maps its method, whose in-graph
        maps are returned (another method is refused). `aug_smooth`: average over flips and
        intensity factors in one batched run (`smooth.aug_smooth_cams`). Every tensor of the result is on `self.device` and owned by
        the caller. Images whose outputs are not finite raise `finite.NonFiniteMapsError`, which
        names them and carries the batch's result.
        """
        meta = self.metadata
        method = _method_for(meta, method)
        if aug_smooth:
            return aug_smooth_cams(self, images, targets, method)
        if meta.input_format == "uint8_nhwc":
            x = as_pixel_batch(images, meta.image_size, self.device)
        else:
            x = as_image_batch(images, meta.image_size, self.device)
        t = as_targets(targets, x.shape[0], meta.num_targets, meta.num_classes)
        t = t.to(self.device)
        step = self.max_batch_size or x.shape[0]
        parts = [
            self._run(x[i : i + step], t[i : i + step], method) for i in range(0, x.shape[0], step)
        ]
        if len(parts) == 1:
            return check_finite(parts[0])
        return check_finite(
            GradCAMResult(
                **{
                    k: None if v is None else torch.cat([getattr(p, k) for p in parts])
                    for k, v in vars(parts[0]).items()
                }
            )
        )

    def _run(
        self, images: torch.Tensor, targets: torch.Tensor, method: str = "gradcam"
    ) -> GradCAMResult:
        logits, classes, activations, gradients, *maps = self._runner(images, targets)
        weights = None
        if self.metadata.channel_weights_only:  # Grad-CAM's weights only
            weights, gradients = gradients, None
        outputs = {
            "target_classes": classes,
            "logits": logits,
            "activations": activations,
            "gradients": gradients,
            "channel_weights": weights,
        }
        if maps:  # computed in the graph (export_onnx(..., maps=True)) for this method
            cams, lowres = maps
            return GradCAMResult(cams=cams, cams_lowres=lowres, **outputs)
        if weights is not None:
            lowres = weighted_sum(weights, activations)
        else:
            lowres = cam_lowres(method, activations, gradients)
        return GradCAMResult.from_lowres(lowres, self.metadata.image_size, **outputs)

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"GradCAMSession({str(self.path)!r}, arch={m.arch}, layer={m.target_layer}, "
            f"size={m.image_size}, K={m.num_targets}, device={self.device}, "
            f"providers={self.providers})"
        )

    @property
    def backend(self) -> str:
        """What runs the model: "onnxruntime", "openvino" or "torch"."""
        return self.choice.backend if self.choice is not None else "torch"

    @property
    def precision(self) -> str:
        """The precision the model runs in (the file's, or the one asked for)."""
        return self.choice.precision if self.choice is not None else self.metadata.precision

    def describe_choice(self) -> str:
        """One line: backend, precision and why (what the CLI prints)."""
        if self.choice is None:
            return f"backend {self.providers[0]}"
        return (
            f"backend {self.choice.backend}, precision {self.choice.precision} "
            f"({self.choice.reason})"
        )
