"""Which ONNX Runtime execution providers a session gets, with their options, and what keeps
one from starting.

ONNX Runtime lists a GPU provider whenever it was compiled in, even where the libraries it
loads (CUDA, cuDNN, TensorRT, the driver) are absent, and then fails or falls back when a session
starts. So availability is decided by loading the provider's library, and a failure names what is
missing (benchmarks/GPU_RUNBOOK.md, docs/reliability.md).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import onnxruntime as ort
import torch

__all__ = [
    "CPU_EP",
    "CUDA_EP",
    "CUDNN_SEARCH",
    "TENSORRT_EP",
    "available_devices",
    "cuda_provider_options",
    "provider_load_error",
    "providers_for",
    "tensorrt_available",
    "tensorrt_provider_options",
    "what_is_missing",
]

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TENSORRT_EP = "TensorrtExecutionProvider"
CUDNN_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


def available_devices() -> list[str]:
    """Devices a session can use here: "cpu", plus "cuda" when ONNX Runtime has the CUDA provider
    (the onnxruntime-gpu package) and torch sees a GPU."""
    devices = ["cpu"]
    if CUDA_EP in ort.get_available_providers() and torch.cuda.is_available():
        devices.append("cuda")
    return devices


def cuda_provider_options(
    device: torch.device,
    *,
    cudnn_search: str = "HEURISTIC",
    cuda_graphs: bool = False,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """CUDA EP options: TF32 off (strict float32), the cuDNN algorithm search, CUDA graphs."""
    if cudnn_search not in CUDNN_SEARCH:
        raise ValueError(f"cudnn_search must be one of {CUDNN_SEARCH}, got {cudnn_search!r}")
    return {
        "device_id": str(device.index or 0),
        "use_tf32": "0",
        "cudnn_conv_algo_search": cudnn_search,
        "enable_cuda_graph": "1" if cuda_graphs else "0",
        **(extra or {}),
    }


# The TensorRT provider's boolean options (besides those named *_enable): ONNX Runtime's Python
# binding takes "True"/"False" (or lower case) for them and refuses "1"/"0".
_TRT_FLAGS = (
    "trt_int8_use_native_calibration_table",
    "trt_dump_subgraphs",
    "trt_force_sequential_engine_build",
    "trt_layer_norm_fp32_fallback",
    "trt_force_timing_cache",
    "trt_detailed_build_log",
    "trt_dump_ep_context_model",
)


def _is_trt_flag(key: str) -> bool:
    return key.endswith("_enable") or key in _TRT_FLAGS


def tensorrt_provider_options(
    device: torch.device,
    engine_cache: str | os.PathLike,
    *,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """TensorRT EP options: engines and timing cache kept in `engine_cache` (an engine takes
    minutes to build; it is rebuilt only when the model or the input shapes change), TensorRT's
    own float16 off (the model's precision is the export's: `export_onnx(..., precision='float16')` keeps
    the head in float32, which a whole-graph float16 build would not). TensorRT picks its own
    kernels, TF32 included on Ampere and newer GPUs: compare its maps with the float16 limits,
    not the strict float32 ones."""
    for key, value in (extra or {}).items():
        if _is_trt_flag(key) and value not in ("True", "False", "true", "false"):
            raise ValueError(
                f"TensorRT option {key} takes 'True' or 'False' (ONNX Runtime refuses {value!r})"
            )
    cache = os.fspath(engine_cache)
    return {
        "device_id": str(device.index or 0),
        "trt_engine_cache_enable": "True",  # boolean keys: "True"/"False", nothing else
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": cache,
        "trt_fp16_enable": "False",
        **(extra or {}),
    }


# The library each GPU provider lives in (onnxruntime/capi/), and what a missing dependency is.
_PROVIDER_LIBRARIES = {
    CUDA_EP: "onnxruntime_providers_cuda",
    TENSORRT_EP: "onnxruntime_providers_tensorrt",
}
_MISSING = (
    ("libcuda.", "the NVIDIA driver (libcuda): no driver here, or no GPU"),
    ("libcudnn", "cuDNN 9 (pip install nvidia-cudnn-cu13, or import torch first)"),
    ("libnvinfer", "TensorRT (pip install tensorrt)"),
    ("libnvonnxparser", "TensorRT's ONNX parser (pip install tensorrt)"),
    ("libcu", "the CUDA runtime libraries (import torch first, or onnxruntime.preload_dlls())"),
    ("libnv", "the CUDA runtime libraries (import torch first, or onnxruntime.preload_dlls())"),
)


def provider_load_error(provider: str) -> str | None:
    """Why `provider`'s library cannot load here (the loader's message, naming the missing
    library: the driver's libcuda, cuDNN, CUDA, TensorRT's libnvinfer), or None when it loads.

    ONNX Runtime lists a GPU provider whenever it was compiled in, and where the provider's
    library fails to load it logs a warning and builds a session without it: only loading the
    library tells whether it can start."""
    if provider not in ort.get_available_providers():
        return f"this onnxruntime ({ort.__version__}) has no {provider}: install onnxruntime-gpu"
    capi = Path(ort.__file__).parent / "capi"
    if os.name == "nt":
        shared, library = "onnxruntime_providers_shared.dll", f"{_PROVIDER_LIBRARIES[provider]}.dll"
    else:
        shared, library = (
            "libonnxruntime_providers_shared.so",
            f"lib{_PROVIDER_LIBRARIES[provider]}.so",
        )
    try:
        ctypes.CDLL(str(capi / shared), mode=ctypes.RTLD_GLOBAL)  # as ONNX Runtime loads it
        ctypes.CDLL(str(capi / library))
    except OSError as exc:
        return str(exc)
    return None


def tensorrt_available() -> bool:
    """True where ONNX Runtime's TensorRT provider can start: listed and its library (which
    links TensorRT's libnvinfer) loads."""
    return provider_load_error(TENSORRT_EP) is None


def what_is_missing(provider: str, message: str = "") -> str:
    """A sentence naming what keeps `provider` from starting, from its library's load error or
    from ONNX Runtime's message."""
    reasons = []
    for ep in (TENSORRT_EP, CUDA_EP) if provider == TENSORRT_EP else (CUDA_EP,):
        error = provider_load_error(ep)
        if error is not None:
            what = next((name for key, name in _MISSING if key in error), None)
            reasons.append(f"{ep} does not load: {error}" + (f" (missing: {what})" if what else ""))
    if not reasons and "cudnn" in message.lower():
        reasons.append("cuDNN failed (cuDNN 9 must match onnxruntime-gpu's CUDA version)")
    if not reasons and "driver" in message.lower():
        reasons.append("the NVIDIA driver is missing or older than onnxruntime-gpu's CUDA needs")
    return "; ".join(reasons) or "see ONNX Runtime's message above"


def providers_for(
    device: torch.device,
    cuda_options: dict[str, str],
    available: list[str] | None = None,
    tensorrt_options: dict[str, str] | None = None,
) -> list:
    """The provider list for `device`; refuses CUDA (or TensorRT, when `tensorrt_options` are
    given) where ONNX Runtime or torch lacks it. TensorRT comes first, the CUDA provider runs
    the nodes TensorRT does not take."""
    available = ort.get_available_providers() if available is None else available
    if device.type == "cpu":
        if tensorrt_options is not None:  # the one check: sessions and the CLI come here
            raise ValueError(
                f"tensorrt=True needs device='cuda' (the session's device is {device})"
            )
        return [CPU_EP]
    if tensorrt_options is not None and TENSORRT_EP not in available:
        raise RuntimeError(
            "tensorrt=True needs ONNX Runtime's TensorRT execution provider, which this "
            f"onnxruntime lacks (it has {available}): install onnxruntime-gpu "
            "(pip install 'gradcam_fast[gpu]') and TensorRT (pip install tensorrt), or leave "
            "tensorrt off to use the CUDA provider"
        )
    if CUDA_EP not in available:
        raise RuntimeError(
            "device='cuda' needs ONNX Runtime's CUDA execution provider, which this onnxruntime "
            f"lacks (it has {available}): uninstall onnxruntime and install onnxruntime-gpu "
            "(pip install 'gradcam_fast[gpu]'), use device='cpu', or the torch backend "
            "(GradCAMSession.from_model(..., device='cuda'))"
        )
    if not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch sees no CUDA device; use device='cpu'")
    providers: list = [(CUDA_EP, cuda_options), CPU_EP]
    if tensorrt_options is not None:
        providers.insert(0, (TENSORRT_EP, tensorrt_options))
    return providers
