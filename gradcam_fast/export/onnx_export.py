"""export_onnx: trace GradCAMGraph to ONNX with metadata, then validate it against the eager
reference (`validate.py`); float16 (`float16.py`) and int8 (`quantize.py`) convert the body on
the way."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from torch import nn

from ..core.graph import GradCAMGraph
from ..format.metadata import (
    CHANNEL_WEIGHTS_OUTPUT_NAMES,
    INPUT_NAMES,
    MAP_OUTPUT_NAMES,
    OUTPUT_NAMES,
    ModelMetadata,
)
from ..format.options import EXPORT_PRECISIONS, channel_weights_only_of, one_precision
from ..model.loading import load_model
from .float16 import to_float16
from .pixels import RawPixelGradCAM
from .validate import example_inputs, example_pixels, validate_onnx

__all__ = ["EXPORT_PRECISIONS", "export_onnx", "export_precision"]

log = logging.getLogger(__name__)

TRACE_BATCH = 2  # batch size traced; validation runs another one


def _as_model(model_or_arch: nn.Module | str, weights: str | os.PathLike, seed: int) -> nn.Module:
    if isinstance(model_or_arch, str):
        return load_model(model_or_arch, weights, seed=seed)
    if not isinstance(model_or_arch, nn.Module):
        raise TypeError(
            "export_onnx takes an arch name or a classifier nn.Module, got "
            f"{type(model_or_arch).__name__}"
        )
    return model_or_arch


def export_precision(precision: str | None, fp16: bool = False, quantize: str | None = None) -> str:
    """The file's precision from `precision` and its deprecated spellings (`fp16=True`,
    `quantize="int8"`, each warned); two different precisions asked at once are refused
    (`options.one_precision`, which export's command line uses too)."""
    asked = {} if precision is None else {f"precision={precision!r}": precision}
    if fp16:
        warnings.warn(
            "export_onnx(fp16=True) is deprecated: use precision='float16'",
            DeprecationWarning,
            stacklevel=3,
        )
        asked["fp16=True"] = "float16"
    if quantize is not None:
        if quantize != "int8":
            raise ValueError(f"quantize must be 'int8' (or None), got {quantize!r}")
        warnings.warn(
            "export_onnx(quantize='int8') is deprecated: use precision='int8'",
            DeprecationWarning,
            stacklevel=3,
        )
        asked["quantize='int8'"] = "int8"
    return one_precision(asked)


def export_onnx(
    model_or_arch: nn.Module | str,
    path: str | os.PathLike,
    *,
    target_layer: str | None = None,
    image_size: int = 224,
    num_targets: int = 1,
    weights: str | os.PathLike = "imagenet",
    opset: int | None = None,
    validate: bool = True,
    seed: int = 0,
    raw_pixels: bool = False,
    precision: str | None = None,
    external_data: bool = False,
    channel_weights_only: bool = False,
    maps: bool = False,
    method: str | None = None,
    calibration: str | os.PathLike | torch.Tensor | None = None,
    calibration_method: str = "minmax",
    fp16: bool = False,
    quantize: str | None = None,
    gradients: bool | None = None,
) -> Path:
    """Export the Grad-CAM graph of a CNN (an arch name loaded with `weights`, or a classifier
    module that torch.fx traces) to `path` and return it. Batch is dynamic; image size and K
    (`num_targets`) are fixed. `target_layer`: a node or module name (`gradcam-fast layers`);
    None: the last stage's output.

    With `validate`, the file is run in ONNX Runtime at a batch size other than the traced one
    and compared with `eager_gradcam`; `ExportValidationError` reports the error figures, or the
    outputs that are not finite. The model is written under a temporary name beside `path` and
    renamed into place only once it validated: after a failure or an interrupt, nothing is left
    at `path`.

    With `raw_pixels`, the `images` input is uint8 [B, S, S, 3] (decoded RGB, channels last)
    and the cast, scaling and mean/std normalization run in the graph (`pixels.RawPixels`).

    `precision` is the file's: "float32" (default), "float16" or "int8" (the older spellings
    `fp16=True` and `quantize="int8"` still work, with a DeprecationWarning).

    With precision "float16", the body below the target layer runs in float16 (inputs and outputs stay
    float32; the head's forward and backward, under 1% of the work, stay float32 so gradients
    do not underflow); meant for the CUDA provider, validated against the float32 reference
    with LIMITS["float16"].

    With `channel_weights_only=True`, the channel-weights model: it outputs Grad-CAM's channel
    weights [B, K, C] (`channel_weights`) instead of the gradients: for the default target this
    skips the first Linear layer's VJP (a second read of its 392 MiB of weights in VGG19), the
    largest cost beyond plain inference at small batches. Such a model serves method "gradcam"
    only. `gradients=False` is its older spelling (still works, with a DeprecationWarning).

    With `maps`, the model also outputs `method`'s maps (default "gradcam"): `cams` [B,K,S,S]
    upsampled and min-max normalized, and `cams_lowres` [B,K,h,w], exactly what GradCAMSession
    computes after a run (maps.py; every method but eigencam exports).

    With `external_data`, the weights go to `<path>.data` beside the model, which ONNX Runtime
    can memory-map instead of copying (see GradCAMSession's `low_memory`).

    With precision "int8", the body below the target layer is quantized statically to int8
    (per-channel weights, uint8 activations, ONNX Runtime's QOperator format), its activation
    ranges taken from `calibration` (a folder of images, or a tensor in the model's input
    format; at least `io.calibration.MIN_CALIBRATION_IMAGES`) with `calibration_method` (minmax,
    percentile or entropy). The head's Linear weights are stored in int8 blocks too (weight-only,
    ONNX Runtime's MatMulNBits); its activations and the written-out backward's gradients stay
    float32. Validated on calibration images with LIMITS["int8"]; the file is only written when
    it passes. See runtime/ort_quantize.py.
    """
    precision = export_precision(precision, fp16, quantize)
    channel_weights_only = channel_weights_only_of(channel_weights_only, gradients, "export_onnx")
    if method is not None and not maps:
        raise ValueError(f"method={method!r} names the maps' method: pass maps=True with it")
    if maps and precision == "int8":
        raise ValueError(
            "maps=True with precision='int8' is not supported yet (the in-graph maps have no int8 "
            "limits): export the int8 model without maps, or the maps model in float32"
        )
    if maps:
        from .maps import check_exportable

        method = check_exportable(method or "gradcam", channel_weights_only)
    model = _as_model(model_or_arch, weights, seed)
    graph = GradCAMGraph(
        model,
        target_layer,
        num_targets,
        image_size=image_size,
        channel_weights_only=channel_weights_only,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    images, targets = example_inputs(TRACE_BATCH, image_size, num_targets, graph.num_classes)
    try:
        with torch.no_grad():
            graph(images, targets)
    except RuntimeError as exc:
        raise ValueError(
            f"image_size {image_size} does not fit this network with target {graph.target_layer}:"
            f" {exc}"
        ) from None

    exported: nn.Module = graph
    if raw_pixels:
        exported = RawPixelGradCAM(graph, graph.info.mean, graph.info.std)
        images = example_pixels(TRACE_BATCH, image_size)
    if maps:
        from .maps import GradCAMMaps

        exported = GradCAMMaps(exported, method, image_size, channel_weights_only)
    started = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    output_names = CHANNEL_WEIGHTS_OUTPUT_NAMES if channel_weights_only else OUTPUT_NAMES
    output_names += MAP_OUTPUT_NAMES if maps else ()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            exported,
            (images, targets),
            dynamo=True,
            external_data=False,
            input_names=list(INPUT_NAMES),
            output_names=list(output_names),
            dynamic_shapes=({0: batch}, {0: batch}),
            opset_version=opset,
            verbose=False,
        )
    proto = program.model_proto
    if precision == "float16":
        proto = to_float16(proto)
    int8, check_images = {}, None
    if precision == "int8":
        from .quantize import quantize_for_export

        proto, int8, check_images = quantize_for_export(
            proto, calibration, calibration_method, image_size, num_targets, graph.info, raw_pixels
        )
    meta = graph.metadata(
        image_size,
        precision=precision,
        input_format="uint8_nhwc" if raw_pixels else "float_nchw",
        maps=maps,
        method=method,
        **int8,
    )
    check = None
    if validate:
        check = lambda staged: validate_onnx(staged, model, images=check_images, name=path)  # noqa: E731
    _save(proto, meta, path, external_data, check)
    log.info("exported %s in %.1f s", path, time.perf_counter() - started)
    return path


def _save(
    proto: onnx.ModelProto,
    meta: ModelMetadata,
    path: Path,
    external_data: bool,
    check: Callable[[Path], object] | None = None,
) -> None:
    """Write with metadata into a fresh temporary folder beside `path`, run `check` (the
    validation) on that copy, then rename it into place: the weights file (if any) first, the
    model last. The model references its weights file by the final name, which inside the
    temporary folder is the temporary copy's. On any failure or interrupt the folder is removed:
    no refused or partial model is ever found at `path` (or in the cache)."""
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "gradcam_fast"
    data = path.with_name(path.name + ".data")
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        staged = staging / path.name
        onnx.save(
            proto,
            staged,
            save_as_external_data=external_data,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        if check is not None:
            check(staged)
        if external_data:
            os.replace(staging / data.name, data)
        os.replace(staged, path)
        if not external_data:
            data.unlink(missing_ok=True)  # a stale weights file of an earlier export
    finally:
        shutil.rmtree(staging, ignore_errors=True)
