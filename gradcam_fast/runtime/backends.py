"""Which runner a session gets for a file: the backend and precision asked for (or chosen by
`cpu_choice` for "auto"), the int8 model made from a float32 file where int8 is asked for, and
the fallbacks, each with a warning that says why.

- `backend="auto"` picks OpenVINO or ONNX Runtime from the CPU's features; where OpenVINO
  cannot convert the model (ONNX Runtime's QLinearConv int8 file), it warns, naming the op, and
  runs the file in ONNX Runtime. An explicit `backend="openvino"` raises instead.
- `precision=None` runs the file as it is (its own precision: what `GradCAMSession(path)`
  always did); "float32" and "bfloat16" are inference precisions of a float32 file; "int8" of a
  float32 file needs `calibration=` and makes the backend's int8 model (`int8_cache`).
- `precision="auto"` (or `backend="auto"`) tries the CPU row's candidates in order: an int8
  model refused by its validation, or that does not pay on this CPU as measured when it was
  made (`speed_trial.pays`: `AUTO_MIN_SPEEDUP` times the float32 file's speed at batch 1 or
  8, and not slower at the other), is passed over with a warning that says why, for the next
  candidate (the last is float32); so is OpenVINO's bfloat16 where its trial on this model and
  CPU (`speed_trial.bfloat16_trial`, once, cached) found that it does not pay or that its
  maps are beyond the bfloat16 limits. An explicit `precision="int8"` runs anyway, and warns
  where int8 was measured slower than float32; an explicit "bfloat16" is not tried first.
- A precision the CPU does not compute natively warns: bfloat16 without AVX512-BF16 or AMX
  (OpenVINO then runs float32, and says so in `inference_precision`), ONNX Runtime's int8 on
  an x86 CPU without VNNI (7-bit weights there, `ort_quantize`). An int8 file whose 8-bit
  kernels would saturate on such a CPU is refused (`Int8SaturationError`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..format.metadata import ModelMetadata
from ..format.onnx_props import file_metadata
from .cpu_choice import (
    Choice,
    candidates,
    cpu_flags,
    int8_pair_sums_saturate,
    openvino_installed,
)
from .speed_trial import AUTO_MIN_SPEEDUP, pays, speeds_line

__all__ = ["AUTO_INT8_MIN_SPEEDUP", "AUTO_MIN_SPEEDUP", "Int8SaturationError", "open_runner"]

AUTO_INT8_MIN_SPEEDUP = AUTO_MIN_SPEEDUP  # its earlier name, from when only int8 was timed
_RULE = f"auto keeps it from {AUTO_MIN_SPEEDUP}x at batch 1 or 8 and not slower at the other"

# (backend, precision) -> (whether this CPU lacks it natively, the warning then); OpenVINO's
# int8 has none: NNCF's file kept its maps on an AVX2-only CPU as with VNNI (r 0.990 / 0.992)
_NATIVE = {
    ("openvino", "bfloat16"): (
        lambda: not cpu_flags() & {"avx512_bf16", "amx_bf16"},
        "precision='bfloat16' on a CPU without native bfloat16 (no AVX512-BF16 or AMX): "
        "OpenVINO runs float32 instead (see session.inference_precision); use 'float32'",
    ),
    ("onnxruntime", "int8"): (
        int8_pair_sums_saturate,
        "precision='int8' on an x86 CPU without VNNI (AVX512-VNNI, AVX-VNNI or AMX-INT8): its "
        "int8 dot products add pairs in saturating int16, so ONNX Runtime's int8 keeps 7-bit "
        "weights here and its maps are further from float32's than with VNNI (VGG19: r 0.985 "
        "against 0.990, benchmarks/RESULTS.md)",
    ),
}


def _choices(
    meta: ModelMetadata, device: torch.device, backend: str, precision: str | None, calibrated: bool
) -> list[Choice]:
    if device.type != "cpu":  # the table is for CPUs; on CUDA only ONNX Runtime runs a file
        if backend == "openvino":
            raise ValueError(
                f"backend='openvino' runs on the CPU (device='cpu'), not {device}; on a GPU use "
                "backend='onnxruntime' (onnxruntime-gpu)"
            )
        wanted = meta.precision if precision in (None, "auto") else precision
        return [Choice("onnxruntime", wanted, f"device {device}: ONNX Runtime's CUDA provider")]
    if meta.precision == "float16":  # a GPU export (export_onnx(..., precision='float16'))
        if backend == "openvino":
            raise ValueError(
                "backend='openvino' runs float32 files (precision float32, bfloat16 or int8), "
                "not a float16 export: export the model in float32"
            )
        return [Choice("onnxruntime", "float16", "a float16 file runs in ONNX Runtime as it is")]
    if meta.precision != "float32":  # an int8 file: it runs as it is
        if precision not in (None, "auto", meta.precision):
            raise ValueError(
                f"{meta.precision} model file: it runs in {meta.precision}, not {precision} "
                "(export a float32 file for other precisions)"
            )
        if backend == "auto" and meta.calibration_method == "nncf" and openvino_installed():
            return [Choice("openvino", "int8", "an int8 file NNCF made for OpenVINO")]
        precision, calibrated = meta.precision, True
    return candidates(
        backend,
        precision or "float32",
        cpu_flags(),
        calibration=calibrated,
        openvino=openvino_installed(),
    )


def _warn_native(choice: Choice) -> None:
    lacking, warning = _NATIVE.get(choice[:2], (None, ""))
    if lacking is not None and lacking():
        warnings.warn(warning, RuntimeWarning, stacklevel=4)


def open_runner(
    path: Path,
    device: torch.device,
    backend: str,
    precision: str | None,
    *,
    calibration: Any,
    calibration_method: str,
    ort: Callable[[Path], Any],
    openvino: Callable[[Path, str], Any],
    open_session: Callable[..., Any],
) -> tuple[Any, Choice]:
    """The runner for `path` and the choice it runs: `ort(path)` builds an ONNX Runtime runner,
    `openvino(path, precision)` an OpenVINO one, `open_session` is what `int8_cache` validates
    with. See the module note for the rules."""
    meta = file_metadata(path)
    auto = "auto" in (backend, precision)
    for choice in _choices(meta, device, backend, precision, calibration is not None):
        if choice.backend == "onnxruntime" and choice.precision == "bfloat16":
            raise ValueError(
                "ONNX Runtime has no bfloat16 path on the CPU: use backend='openvino' (OpenVINO's "
                "bf16 inference) or GradCAMSession.from_model(..., precision='bfloat16')"
            )
        if choice.precision == "int8" and meta.precision == "float32":
            made = _int8_file(
                path, meta, choice, calibration, calibration_method, auto, open_session
            )
            if made is None:
                continue  # auto: refused or not faster here, said in a warning
            run = made
        elif auto and choice[:2] == ("openvino", "bfloat16") and meta.precision == "float32":
            if not _bfloat16_pays(path, meta, calibration, open_session):
                continue  # said in a warning
            run = path
        elif calibration is not None and choice.precision != "int8" and not auto:
            raise ValueError(f"calibration= is for precision='int8' (this session runs {choice})")
        else:
            run = path
        if device.type == "cpu":
            _warn_native(choice)
            if choice[:2] == ("onnxruntime", "int8") and run == path:
                _refuse_saturating(path)  # a model int8_cache made here is 7-bit (its name)
        return _open(run, meta, choice, backend, ort, openvino)
    raise AssertionError("candidates() always ends with float32")  # pragma: no cover


class Int8SaturationError(ValueError):
    """An int8 file whose convolutions would saturate on this CPU (8-bit kernels, no VNNI)."""


def _refuse_saturating(path: Path) -> None:
    """An int8 file with 8-bit convolution kernels (made on a CPU with VNNI, or by another
    tool) on an x86 CPU without VNNI: ONNX Runtime's int8 convolutions saturate there and the
    maps would be wrong without an error, so the file is refused (`ort_quantize` makes 7-bit
    kernels on such a CPU)."""
    if not int8_pair_sums_saturate():
        return
    from .ort_quantize import saturating_convs

    if saturating := saturating_convs(path):
        raise Int8SaturationError(
            f"{path.name}: {len(saturating)} int8 convolution kernels use the full 8-bit range "
            f"({saturating[0]}, ...), and this CPU has no VNNI (AVX512-VNNI, AVX-VNNI or "
            "AMX-INT8): ONNX Runtime's int8 convolutions saturate on such kernels here and the "
            "maps would be wrong. Export the int8 file again on a CPU like this one (gradcam_fast "
            "then stores 7-bit kernels), or run the float32 file"
        )


def _int8_file(
    path: Path,
    meta: ModelMetadata,
    choice: Choice,
    calibration: Any,
    calibration_method: str,
    auto: bool,
    open_session: Callable[..., Any],
) -> Path | None:
    """The cached int8 model of the float32 file for `choice`'s backend; under auto, None (and a
    warning that says why) where it was refused or measured not faster than float32."""
    from .int8_cache import Int8ValidationError, int8_model, measured_speedups

    try:
        made = int8_model(
            path, meta, choice.backend, calibration, calibration_method, open_session=open_session
        )
    except Int8ValidationError as exc:
        if not auto:
            raise
        warnings.warn(
            f"auto passes over {choice.backend} int8: {exc}", RuntimeWarning, stacklevel=4
        )
        return None
    speeds = measured_speedups(made)
    if speeds is None or (pays(speeds) if auto else min(speeds.values()) >= 1.0):
        return made
    said = (
        f"{choice.backend} int8 of {path.name}: {speeds_line(speeds)} the speed of float32 in "
        "ONNX Runtime, as measured on this CPU when it was made"
    )
    if auto:
        warnings.warn(f"auto passes over {said} ({_RULE})", RuntimeWarning, stacklevel=4)
        return None
    warnings.warn(f"{said}: precision='float32' is faster here", RuntimeWarning, stacklevel=4)
    return made


def _bfloat16_pays(path: Path, meta: ModelMetadata, calibration: Any, open_session) -> bool:
    """Whether auto keeps OpenVINO's bfloat16 for this file: its trial on this CPU (made once,
    cached) kept the maps and found that it pays (`speed_trial.pays`); else a warning says
    why not."""
    from .speed_trial import bfloat16_trial

    trial = bfloat16_trial(path, meta, open_session, calibration)
    if trial["failed"]:
        why = f"its maps are beyond the bfloat16 limits against float32 ({trial['failed']})"
    elif not pays(trial["by_batch"]):
        why = (
            f"it ran {speeds_line(trial['by_batch'])} the speed of float32 in ONNX Runtime on "
            f"this CPU ({_RULE})"
        )
    else:
        return True
    warnings.warn(
        f"auto passes over OpenVINO bfloat16 for {path.name}: {why}", RuntimeWarning, stacklevel=4
    )
    return False


def _open(path: Path, meta: ModelMetadata, choice: Choice, backend: str, ort, openvino):
    if choice.backend == "onnxruntime":
        return ort(path), choice
    from .openvino_backend import OpenVinoConversionError

    try:
        return openvino(path, choice.precision), choice
    except OpenVinoConversionError as exc:
        if backend != "auto":
            raise
        warnings.warn(
            f"backend='auto' chose OpenVINO ({choice.reason}), which cannot run this file: "
            f"{exc}. Running it in ONNX Runtime instead",
            RuntimeWarning,
            stacklevel=4,
        )
        fallback = Choice("onnxruntime", meta.precision, f"OpenVINO cannot convert {exc.ops}")
        return ort(path), fallback
