"""OpenVINO execution of an exported model: the same .onnx file, read by OpenVINO's ONNX frontend.

OpenVINO is imported when a runner starts, never with the package. Precision is explicit:
"float32" sets INFERENCE_PRECISION_HINT=f32 (OpenVINO's own default on an AMX CPU is bf16, which
a float32 request must never get silently), "bfloat16" sets bf16, "int8" runs a model whose
body carries quantize/dequantize pairs (`ov_quantize.py`) with the rest in f32.

Each thread gets its own infer request (one request must not run twice at once). Inputs are
wrapped as `ov.Tensor`s over the torch tensors' memory (`shared_memory=True`), and the outputs
are torch tensors allocated for the call and handed to OpenVINO as its output tensors, which it
fills in place: the caller owns what it gets, with no copy. Compiled models are cached in
`cache_dir()/openvino/<key>`, the key naming the file (path, size, modification time), so a
second start of the same file loads the compiled blob instead of converting and compiling.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import torch

from ..format.metadata import INPUT_NAMES, NotAGradCAMModel
from ..format.onnx_props import file_metadata
from .cachedir import cache_dir, file_key

__all__ = [
    "HINTS",
    "INSTALL",
    "OV_PRECISIONS",
    "BackendNotInstalled",
    "OpenVinoConversionError",
    "OpenVinoRunner",
    "import_openvino",
]

INSTALL = "pip install 'gradcam_fast[openvino]' (or pip install openvino nncf)"
HINTS = ("LATENCY", "THROUGHPUT")
# the session's precision -> OpenVINO's INFERENCE_PRECISION_HINT (an int8 model's float parts
# run in f32, as in ONNX Runtime)
OV_PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "int8": "f32"}
_TORCH = {"f32": torch.float32, "i64": torch.int64, "u8": torch.uint8}


class BackendNotInstalled(ImportError):
    """The runtime a backend needs is not installed; the message names the pip command."""


class OpenVinoConversionError(RuntimeError):
    """OpenVINO cannot convert the model; `ops` names the ONNX ops it failed on."""

    def __init__(self, message: str, ops: tuple[str, ...]):
        super().__init__(message)
        self.ops = ops


def import_openvino():
    """The openvino module, or BackendNotInstalled naming the pip command."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendNotInstalled(
            f"backend='openvino' needs OpenVINO, which is not installed here ({exc}): {INSTALL}"
        ) from None
    return openvino


def _failed_ops(message: str) -> tuple[str, ...]:
    """The ops of OpenVINO's "Conversion is failed for: QLinearConv-20, ..." summary line."""
    match = re.search(r"Conversion is failed for:\s*([^\n]+)", message)
    if not match:
        return ()
    return tuple(dict.fromkeys(re.sub(r"-\d+$", "", op.strip()) for op in match[1].split(",")))


class OpenVinoRunner:
    """The OpenVINO runner (`protocols.Runner`): a compiled gradcam_fast ONNX file, images,
    targets -> raw outputs.

    `precision`: "float32", "bfloat16" or "int8" (see the module note); `threads`: OpenVINO's
    INFERENCE_NUM_THREADS (default: all the cores it may use); `hint`: PERFORMANCE_HINT,
    "LATENCY" (one stream, every thread on each call: what a batch needs) or "THROUGHPUT"
    (several streams, for many concurrent calls); `num_streams` overrides the hint's choice;
    `cache`: keep compiled models under `cache_dir()/openvino` (False: compile every time)."""

    def __init__(
        self,
        path: Path,
        device: torch.device,
        *,
        precision: str = "float32",
        threads: int | None = None,
        hint: str = "LATENCY",
        num_streams: int | None = None,
        cache: bool = True,
    ):
        ov = import_openvino()
        if device.type != "cpu":
            raise ValueError(
                f"backend='openvino' runs on the CPU (device='cpu'), not {device}; on a GPU use "
                "backend='onnxruntime' with onnxruntime-gpu"
            )
        if precision not in OV_PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(OV_PRECISIONS)}, got {precision!r}")
        if hint not in HINTS:
            raise ValueError(f"hint must be one of {HINTS}, got {hint!r}")
        self.metadata = file_metadata(path)
        if precision == "int8" and self.metadata.precision != "int8":
            raise ValueError(
                f"{path} is a {self.metadata.precision} model: precision='int8' needs an int8 "
                "file (GradCAMSession(..., precision='int8', calibration=...) makes one)"
            )
        if precision != "int8" and self.metadata.precision == "int8":
            precision = "int8"  # an int8 file runs as it is; the float parts in f32
        self.device, self.precision = device, precision
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision], "PERFORMANCE_HINT": hint}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(int(threads))
        if num_streams is not None:
            config["NUM_STREAMS"] = str(int(num_streams))
        if cache:
            folder = cache_dir() / "openvino" / file_key(path, sorted(config.items()))
            folder.mkdir(parents=True, exist_ok=True)
            config["CACHE_DIR"] = str(folder)
        self.compiled = _compile(ov, path, config)
        self.config = config
        # what OpenVINO runs: "f32" or "bf16" ("bf16" asked on a CPU without it gives "f32")
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision: str = getattr(hint, "get_type_name", lambda: str(hint))()
        self.loaded_from_cache = bool(self.compiled.get_property("LOADED_FROM_CACHE"))
        self.providers = [
            f"OpenVINO {ov.__version__.split('-')[0]} CPU ({precision}, {self.inference_precision})"
        ]
        self._check_io(path)
        self._local = threading.local()

    def _check_io(self, path: Path) -> None:
        ins, outs = self.compiled.inputs, self.compiled.outputs
        in_names = tuple(i.get_any_name() for i in ins)
        out_names = tuple(o.get_any_name() for o in outs)
        self.output_names = self.metadata.output_names
        if in_names != INPUT_NAMES or out_names != self.output_names:
            raise NotAGradCAMModel(
                f"{path} has inputs {in_names} and outputs {out_names}, not the gradcam_fast "
                f"contract {INPUT_NAMES} -> {self.output_names}"
            )
        self.output_specs = []
        for out in outs:
            shape = out.get_partial_shape()
            dims = tuple(shape[i].get_length() for i in range(1, shape.rank.get_length()))
            self.output_specs.append((dims, _TORCH[out.get_element_type().get_type_name()]))

    def _request(self):
        """This thread's infer request."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run one batch; returns (logits, target_classes, activations, gradients or channel
        weights[, cams, cams_lowres]) as torch tensors allocated for this call."""
        import openvino as ov

        request = self._request()
        images, targets = images.contiguous(), targets.contiguous()
        request.set_input_tensor(0, ov.Tensor(images.numpy(), shared_memory=True))
        request.set_input_tensor(1, ov.Tensor(targets.numpy(), shared_memory=True))
        batch = images.shape[0]
        out = [torch.empty((batch, *shape), dtype=dtype) for shape, dtype in self.output_specs]
        for index, tensor in enumerate(out):
            request.set_output_tensor(index, ov.Tensor(tensor.numpy(), shared_memory=True))
        request.infer()
        for index, tensor in enumerate(out):  # OpenVINO may have written elsewhere: check
            got = request.get_output_tensor(index)
            if got.data.ctypes.data != tensor.data_ptr() and tensor.numel():
                tensor.copy_(torch.from_numpy(np.asarray(got.data)))
        return tuple(out)


def _compile(ov, path: Path, config: dict[str, str]):
    """core.compile_model on the file (read and converted by OpenVINO, or loaded from the
    cache); a model OpenVINO cannot convert raises OpenVinoConversionError naming the ops."""
    try:
        return ov.Core().compile_model(str(path), "CPU", config)
    except RuntimeError as exc:
        text = str(exc)
        ops = _failed_ops(text)
        if ops:
            raise OpenVinoConversionError(
                f"OpenVINO cannot convert {path}: no conversion for {', '.join(ops)}"
                + (
                    " (ONNX Runtime's int8 format, QOperator; OpenVINO runs the int8 model "
                    "that NNCF makes from the float32 file: precision='int8', calibration=...)"
                    if "QLinearConv" in ops
                    else ""
                ),
                ops,
            ) from None
        raise
