"""export_onnx: trace GradCAMGraph to ONNX with metadata, then validate it against the eager way."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from torch import nn

from .graph import GradCAMGraph
from .metadata import INPUT_NAMES, LEAN_OUTPUT_NAMES, OUTPUT_NAMES, ModelMetadata
from .models import load_vgg, model_info
from .pixels import RawPixelGradCAM, normalize_pixels

__all__ = [
    "ExportValidationError",
    "compare_with_reference",
    "export_onnx",
    "failing_figures",
    "map_correlations",
    "relative_error",
    "validate_onnx",
]

log = logging.getLogger(__name__)

TRACE_BATCH = 2  # batch size traced; validation runs another one
VALIDATE_BATCH = 3
TOLERANCE = 1e-4  # DESIGN.md: relative error of float32 outputs against the eager reference
# Share of gradient elements allowed beyond TOLERANCE. Where a max-pool window's two largest
# inputs differ by less than float32 rounding, two runtimes may pick different winners and the
# gradient moves to the other position of the window. Such near-ties are rare (a few elements per
# million at VGG19 224) and leave the Grad-CAM weights and maps unchanged; anything systematic is
# far above this share.
NEAR_TIE_SHARE = 1e-4
# What each figure of `compare_with_reference` may reach, by the model's precision. A float16
# body perturbs the activations by ~1e-3, enough to flip ReLU masks and max-pool winners in the
# head near zero or near ties, which moves single channel weights by a few percent; the maps sum
# over all channels and stay within 5%. So float16 is judged on logits, activations and maps;
# its channel weights and gradient share are reported, not judged.
LIMITS = {
    "float32": {
        "logits": TOLERANCE,
        "activations": TOLERANCE,
        "cams_lowres": TOLERANCE,
        "weights": TOLERANCE,
        "gradients_beyond_share": NEAR_TIE_SHARE,
    },
    "float16": {"logits": 1e-2, "activations": 1e-2, "cams_lowres": 5e-2},
    # An int8 body (quantize.py) moves the activations by a few % of their range: single
    # logits, channel weights and gradient elements move by more, most maps keep their shape.
    # So int8 is judged on logits and activations (relative error) and on the maps' Pearson
    # correlation with the reference: `cams_lowres_decorrelation` = 1 - the median per-map
    # correlation, at most 0.05 (a broken quantization gives correlations far below 0.9; tiny
    # random networks on noise, the validation's worst case, reach 0.02-0.03). The worst map is
    # reported, not judged: near-empty maps (few positive pixels) fall far lower. Issue 13's
    # fidelity (median >= 0.98, worst >= 0.95 on photos) is asserted on a trained network in
    # tests/test_quantize.py and measured on VGG19 by benchmarks/lowp.py.
    "int8": {"logits": 0.1, "activations": 0.25, "cams_lowres_decorrelation": 0.05},
    # A bfloat16 body (torch backend on the CPU) keeps 8 significant bits: judged like int8.
    "bfloat16": {"logits": 0.1, "activations": 0.25, "cams_lowres_decorrelation": 0.05},
}


class ExportValidationError(RuntimeError):
    """The exported model disagrees with the eager reference beyond the tolerance."""


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the error relative to the tensor's scale."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / (scale if scale > 0 else 1.0)


def map_correlations(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each map of `got` with the same map of `ref` ([..., h, w] ->
    [...]). Two constant maps correlate 1 (neither has a shape), one constant map 0."""
    a, b = (t.detach().double().cpu().flatten(-2) for t in (got, ref))
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    flat_a = a.abs().amax(-1) <= 1e-12 * got.detach().double().abs().flatten(-2).amax(-1).cpu()
    flat_b = b.abs().amax(-1) <= 1e-12 * ref.detach().double().abs().flatten(-2).amax(-1).cpu()
    corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    corr = torch.where(flat_a | flat_b, torch.zeros_like(corr), corr)
    return torch.where(flat_a & flat_b, torch.ones_like(corr), corr)


def _as_model(model_or_arch: nn.Module | str, weights: str | os.PathLike, seed: int) -> nn.Module:
    if isinstance(model_or_arch, str):
        return load_vgg(model_or_arch, weights, seed=seed)
    if not isinstance(model_or_arch, nn.Module):
        raise TypeError(
            f"export_onnx takes an arch name or a torchvision VGG, got {type(model_or_arch).__name__}"
        )
    return model_or_arch


def _example_inputs(
    batch: int, image_size: int, num_targets: int, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images and mixed targets: ranks for the first image, class indices for the rest."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=gen)
    targets = torch.randint(0, num_classes, (batch, num_targets), generator=gen)
    targets[0] = torch.arange(-1, -num_targets - 1, -1)
    return images, targets


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
    fp16: bool = False,
    external_data: bool = False,
    gradients: bool = True,
    quantize: str | None = None,
    calibration: str | os.PathLike | torch.Tensor | None = None,
    calibration_method: str = "minmax",
) -> Path:
    """Export the Grad-CAM graph of a VGG (an arch name loaded with `weights`, or a model) to
    `path` and return it. Batch is dynamic; image size and K (`num_targets`) are fixed.

    With `validate`, the file is run in ONNX Runtime at a batch size other than the traced one
    and compared with `eager_gradcam`; `ExportValidationError` reports the error figures.

    With `raw_pixels`, the `images` input is uint8 [B, S, S, 3] (decoded RGB, channels last)
    and the cast, scaling and mean/std normalization run in the graph (`pixels.RawPixels`).

    With `fp16`, the body below the target layer runs in float16 (inputs and outputs stay
    float32; the head's forward and backward, under 1% of the work, stay float32 so gradients
    do not underflow); meant for the CUDA provider, validated against the float32 reference
    with LIMITS["float16"].

    With `gradients=False`, the model outputs Grad-CAM's channel weights [B, K, C]
    (`channel_weights`) instead of the gradients: for the default target this skips the first
    Linear layer's VJP (a second read of its 392 MiB of weights in VGG19), the largest cost
    beyond plain inference at small batches. Such a model serves method "gradcam" only.

    With `external_data`, the weights go to `<path>.data` beside the model, which ONNX Runtime
    can memory-map instead of copying (see GradCAMSession's `low_memory`).

    With `quantize="int8"`, the body below the target layer is quantized statically to int8
    (per-channel weights, uint8 activations, ONNX Runtime's QOperator format), its activation
    ranges taken from `calibration` (a folder of images, or a tensor in the model's input
    format; at least `quantize.MIN_CALIBRATION_IMAGES`) with `calibration_method` (minmax,
    percentile or entropy); the head and its backward stay float32. Validated on calibration
    images with LIMITS["int8"]; the file is only written when it passes. See quantize.py.
    """
    model = _as_model(model_or_arch, weights, seed)
    graph = GradCAMGraph(model, target_layer, num_targets, gradients=gradients)
    if graph.num_classes is None:
        raise ValueError("the model's classifier must end with an nn.Linear layer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = model_info(model)

    images, targets = _example_inputs(TRACE_BATCH, image_size, num_targets, graph.num_classes)
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
        exported = RawPixelGradCAM(graph, info.mean, info.std)
        images = _example_pixels(TRACE_BATCH, image_size)
    started = time.perf_counter()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            exported,
            (images, targets),
            dynamo=True,
            external_data=False,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES if gradients else LEAN_OUTPUT_NAMES),
            dynamic_shapes=({0: batch}, {0: batch}),
            opset_version=opset,
            verbose=False,
        )
    proto = program.model_proto
    if fp16:
        proto = _to_float16(proto)
    int8, check_images = {}, None
    if quantize is not None:
        from .quantize import quantize_for_export

        proto, int8, check_images = quantize_for_export(
            proto, quantize, calibration, calibration_method, fp16, image_size, num_targets, info,
            raw_pixels,
        )  # fmt: skip
    meta = ModelMetadata(
        arch=info.arch,
        target_layer=graph.target_layer,
        image_size=image_size,
        num_targets=num_targets,
        num_classes=graph.num_classes,
        mean=tuple(info.mean),
        std=tuple(info.std),
        weights=info.weights,
        categories=tuple(info.categories),
        input_format="uint8_nhwc" if raw_pixels else "float_nchw",
        precision="int8" if quantize else "float16" if fp16 else "float32",
        gradients=gradients,
        **int8,
    )
    check = (lambda p: validate_onnx(p, model, images=check_images)) if validate else None
    _save(proto, meta, path, external_data, check)
    log.info("exported %s in %.1f s", path, time.perf_counter() - started)
    return path


def _to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The body (every node the `activations` output depends on) to float16; the head, target
    resolution and the written-out backward stay float32, with casts at the boundary."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    producers = {out: node for node in proto.graph.node for out in node.output}
    body, stack = set(), ["activations"]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in body:
            body.add(node.name)
            stack.extend(node.input)
    head = [node.name for node in proto.graph.node if node.name not in body]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_float_to_float16(proto, keep_io_types=True, node_block_list=head)


def _example_pixels(batch: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """Seeded uint8 RGB images [B, S, S, 3] for raw-pixel models."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, image_size, image_size, 3), generator=gen).to(torch.uint8)


def _save(
    proto: onnx.ModelProto,
    meta: ModelMetadata,
    path: Path,
    external_data: bool,
    check: Callable[[Path], object] | None = None,
) -> None:
    """Write with metadata; the model file under a temporary name, then renamed, so a model
    file that exists is whole (its weights file, if any, is written first). `check` (the
    validation) runs on the temporary file: a model that fails it is removed, never published."""
    del proto.metadata_props[:]
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "gradcam_fast"
    tmp = path.with_name(path.name + ".tmp")
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing weights file
    onnx.save(
        proto,
        tmp,
        save_as_external_data=external_data,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    try:
        if check is not None:
            check(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        data.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def compare_with_reference(got, ref, tol: float = TOLERANCE) -> dict[str, float]:
    """Relative errors of each output of `got` against `ref` (two `GradCAMResult`s), the
    Grad-CAM weights (spatial means of the gradients) among them, plus `gradients_beyond_share`:
    the share of gradient elements whose error exceeds `tol` (max-pool near-ties, see
    NEAR_TIE_SHARE). The element-wise `gradients` figure is reported, not judged."""
    errors = {
        name: relative_error(getattr(got, name), getattr(ref, name))
        for name in ("logits", "activations", "cams_lowres")
    }
    errors["weights"] = relative_error(got.weights(), ref.weights())
    corr = map_correlations(got.cams_lowres, ref.cams_lowres).flatten()
    errors["cams_lowres_decorrelation"] = 1.0 - corr.median().item()
    errors["cams_lowres_worst_decorrelation"] = 1.0 - corr.min().item()
    if got.gradients is None:  # a model exported with gradients=False
        return errors
    diff = (got.gradients.double().cpu() - ref.gradients.double().cpu()).abs()
    scale = ref.gradients.abs().max().item() or 1.0
    errors["gradients_beyond_share"] = (diff > tol * scale).double().mean().item()
    errors["gradients"] = diff.max().item() / scale
    return errors


def failing_figures(errors: dict[str, float], precision: str = "float32") -> list[str]:
    """Names of the figures in `errors` beyond the LIMITS of `precision`."""
    limits = LIMITS[precision]
    return [k for k, v in errors.items() if k in limits and v > limits[k]]


def validate_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    batch: int = VALIDATE_BATCH,
    images: torch.Tensor | None = None,
) -> dict[str, float]:
    """Run the exported file on the CPU at `batch` (or on `images`, in the model's input format)
    and compare with `eager_gradcam` (float32).

    Returns the relative errors by output; raises `ExportValidationError` when one exceeds its
    limit for the model's precision (LIMITS) or a resolved class differs. An int8 model is
    compared at the classes it resolved, and the share of top-1 classes it kept is reported.
    """
    from .reference import eager_gradcam
    from .runtime import GradCAMSession

    session = GradCAMSession(path, device="cpu")
    meta = session.metadata
    given = images
    if given is not None:
        batch = given.shape[0]
    images, targets = _example_inputs(
        batch, meta.image_size, meta.num_targets, meta.num_classes, seed=1
    )
    if meta.input_format == "uint8_nhwc":  # raw pixels in; eager gets the float path's input
        pixels = _example_pixels(batch, meta.image_size, seed=1) if given is None else given
        images = normalize_pixels(pixels, meta.mean, meta.std)
        got = session(pixels, targets)
    else:
        images = images if given is None else given
        got = session(images, targets)
    if meta.precision == "int8":  # maps compared at the same classes; top-1 agreement reported
        ref = eager_gradcam(model, images, got.target_classes, meta.target_layer)
    else:
        ref = eager_gradcam(model, images, targets, meta.target_layer)
    errors = compare_with_reference(got, ref)
    if meta.precision == "int8":
        kept = got.logits.argmax(1).cpu() == ref.logits.argmax(1).cpu()
        errors["top1_kept"] = kept.double().mean().item()
    failed = failing_figures(errors, meta.precision)
    same_classes = torch.equal(got.target_classes.cpu(), ref.target_classes.cpu())
    if failed or not same_classes:
        figures = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
        raise ExportValidationError(
            f"{path} ({meta.precision}) disagrees with the eager reference at batch {batch}: "
            f"{failed} beyond the limits {LIMITS[meta.precision]}; relative errors {figures}; "
            f"target classes {'match' if same_classes else 'differ'}"
        )
    log.info("validated %s: %s", path, errors)
    return errors
