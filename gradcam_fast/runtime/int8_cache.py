"""The int8 model of a float32 file, for one backend and one calibration set, made once and cached.

`GradCAMSession(path, precision="int8", calibration=...)` comes here: one `calibration=`
interface for both runtimes. ONNX Runtime gets its QOperator int8 file
(`ort_quantize.quantize_body`, as `export_onnx(..., precision="int8")` makes), OpenVINO the QDQ
file NNCF makes (`ov_quantize.py`), since OpenVINO cannot read QLinearConv. Before it is cached
the int8 model is judged against the float32 file on (up to 8 of) the calibration images with
`compare.LIMITS["int8"]`: a quantization that broke the maps is refused, never cached.
Files live in `cache_dir()/int8/`, named by the source file (path, size, modification time),
the backend, the calibration method, "7bit" where ONNX Runtime's kernels are 7-bit on this CPU
(an x86 CPU without VNNI, `ort_quantize`: a cache shared with a VNNI machine keeps both) and a
hash of the calibration set.

When it is made, the int8 model is also timed against the float32 file in ONNX Runtime on the
same images at batch 1 and 8 (`speed_trial.speedup`), and the speed-up is kept beside it
(`<file>.speed.json`, read by `measured_speedups`): int8 pays on heavy convolutions and costs
more than it saves on small depthwise models (MobileNet-V3: 0.7x in benchmarks/RESULTS.md), so
`precision="auto"` passes over an int8 model that is not faster on this CPU.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from ..format.metadata import ModelMetadata
from .cachedir import cache_dir, file_key
from .cpu_choice import int8_pair_sums_saturate
from .speed_trial import speedup

__all__ = ["Int8ValidationError", "int8_model", "measured_speedups", "write_int8"]

SPEED_SUFFIX = ".speed.json"


class Int8ValidationError(ValueError):
    """The int8 model's maps or logits are beyond `LIMITS["int8"]` against float32's."""


def int8_model(
    path: str | os.PathLike,
    meta: ModelMetadata,
    backend: str,
    calibration,
    calibration_method: str = "minmax",
    *,
    open_session: Callable[..., Any],
) -> Path:
    """Path of the int8 model of the float32 file `path` (metadata `meta`) for `backend`
    ("onnxruntime" or "openvino"), calibrated on `calibration` (a folder of photos or a tensor
    in the model's input format, at least 8); made, validated and cached on first use.
    `open_session(path, backend=...)` opens a CPU session (passed in by the session module,
    which imports this one)."""
    from ..format.options import check_calibration_method
    from ..io.calibration import calibration_fingerprint, calibration_images

    if meta.precision != "float32":
        raise ValueError(f"{path} is a {meta.precision} model: int8 is made from a float32 file")
    if calibration is None:
        raise ValueError(
            "precision='int8' of a float32 file needs calibration=: a folder of at least 8 "
            "photos like those to explain, or a tensor of them in the model's input format"
        )
    if backend == "openvino":
        calibration_method = "nncf"
    else:
        check_calibration_method(calibration_method)
    key = file_key(path)
    bits = "-7bit" if backend == "onnxruntime" and int8_pair_sums_saturate() else ""
    name = f"{Path(path).stem}-{key}-{backend}-{calibration_method}{bits}"
    out = cache_dir() / "int8" / f"{name}-{calibration_fingerprint(calibration)}.onnx"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / ".int8.lock"):
        if out.is_file():
            return out
        raw = meta.input_format == "uint8_nhwc"
        images = calibration_images(calibration, meta.image_size, meta.mean, meta.std, raw)
        _make(Path(path), out, meta, backend, images, calibration_method, open_session)
    return out


def _make(
    path: Path,
    out: Path,
    meta: ModelMetadata,
    backend: str,
    images: torch.Tensor,
    method: str,
    open_session: Callable[..., Any],
) -> None:

    with tempfile.TemporaryDirectory(prefix=".int8-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        write_int8(path, staged, meta, backend, images, method)
        float32, int8 = _validate(path, staged, backend, images[:8], open_session)
        speed = {
            **speedup(float32, int8, images[:8]),
            "against": "the float32 file in ONNX Runtime",
        }
        sidecar = Path(tmp) / (out.name + SPEED_SUFFIX)
        sidecar.write_text(json.dumps(speed, indent=1))
        os.replace(sidecar, out.parent / sidecar.name)
        os.replace(staged, out)  # last: the model's presence means everything is there


def measured_speedups(path: str | os.PathLike) -> dict[str, float] | None:
    """The speed-ups of the cached int8 model `path` over its float32 file in ONNX Runtime by
    batch size ("1", "8"), as measured on this machine when it was made (None where it was not
    measured; a record without batch sizes gives its one figure under "?")."""
    try:
        record = json.loads(Path(str(path) + SPEED_SUFFIX).read_text())
        by_batch = record.get("by_batch") or {"?": record["speedup"]}
        return {str(b): float(v) for b, v in by_batch.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def write_int8(
    path: Path,
    out: Path,
    meta: ModelMetadata,
    backend: str,
    images: torch.Tensor,
    method: str = "minmax",
    head_weights: bool | None = None,
) -> Path:
    """Write the int8 model of the float32 file `path` for `backend` to `out`, calibrated on
    `images` (the model's input format), with its metadata (`head_weights`: the head's Linear
    weights in int8 too; None: each backend's default, True for ONNX Runtime, False for
    OpenVINO, as measured); not validated (`int8_model` does
    that before caching; the benchmarks check every contender themselves)."""
    import onnx

    proto = onnx.load(path)
    if backend == "openvino":
        from .ov_quantize import quantize_with_nncf

        proto = quantize_with_nncf(proto, images, meta.num_targets, bool(head_weights))
    else:
        from .ort_quantize import quantize_body

        proto = quantize_body(proto, images, meta.num_targets, method, head_weights is not False)
    fields = {"precision": "int8", "calibration_method": method, "calibration_images": len(images)}
    props = {p.key: p for p in proto.metadata_props}
    for field, value in fields.items():
        key = f"gradcam_fast.{field}"
        if key in props:
            props[key].value = json.dumps(value)
        else:
            proto.metadata_props.add(key=key, value=json.dumps(value))
    onnx.save(proto, out)
    return out


def _validate(source: Path, staged: Path, backend: str, images: torch.Tensor, open_session):
    """The float32 and int8 sessions, once the int8 model's maps and logits are within
    LIMITS["int8"] of float32's on `images`."""
    from ..check.compare import compare_with_reference, failing_figures

    float32 = open_session(source, backend="onnxruntime")
    int8 = open_session(staged, backend=backend)
    ref = float32(images)
    got = int8(images, ref.target_classes)
    errors = compare_with_reference(got, ref)
    failed = failing_figures(errors, "int8")
    if failed:
        figures = ", ".join(f"{k} {v:.3g}" for k, v in errors.items())
        raise Int8ValidationError(
            f"the {backend} int8 model of {source} is beyond the int8 limits against float32 on "
            f"the calibration images ({failed}; {figures}): {_advice(ref.logits)}"
        )
    return float32, int8


def _advice(logits: torch.Tensor) -> str:
    """What to try. Logits near zero mean activations that vanish with depth (untrained
    weights: torchvision's random MobileNet-V3 and EfficientNet give logits of 1e-10 to 1e-14),
    below the smallest scale NNCF gives an activation, so int8 zeroes them."""
    largest = float(logits.abs().max())
    if largest < 1e-4:
        return (
            f"the float32 logits are at most {largest:.2g}: the activations vanish with depth "
            "(untrained or random weights?) below what int8 scales hold; quantize a trained model"
        )
    return "try other or more calibration photos"
