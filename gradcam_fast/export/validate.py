"""validate_onnx: an exported file run on the CPU and compared with the eager reference.

Every export is validated before it is written (`export_onnx(..., validate=True)`), with the
limits of its precision (`check.compare.LIMITS`, and `maps.MAP_LIMITS` for in-graph maps).
The seeded example inputs live here too: export traces with them, validation runs others.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from ..check.compare import LIMITS, compare_with_reference, failing_figures
from ..check.finite import NonFiniteMapsError
from ..check.reference import eager_gradcam
from ..format.preprocessing import normalize_pixels

__all__ = [
    "ExportValidationError",
    "example_inputs",
    "example_pixels",
    "validate_onnx",
]

log = logging.getLogger(__name__)

VALIDATE_BATCH = 3


class ExportValidationError(RuntimeError):
    """The exported model disagrees with the eager reference beyond the tolerance."""


def example_inputs(
    batch: int, image_size: int, num_targets: int, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images and mixed targets: ranks for the first image, class indices for the rest."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=gen)
    targets = torch.randint(0, num_classes, (batch, num_targets), generator=gen)
    targets[0] = torch.arange(-1, -num_targets - 1, -1)
    return images, targets


def example_pixels(batch: int, image_size: int, seed: int = 0) -> torch.Tensor:
    """Seeded uint8 RGB images [B, S, S, 3] for raw-pixel models."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, image_size, image_size, 3), generator=gen).to(torch.uint8)


def validate_onnx(
    path: str | os.PathLike,
    model: nn.Module,
    batch: int = VALIDATE_BATCH,
    images: torch.Tensor | None = None,
    *,
    name: str | os.PathLike | None = None,
) -> dict[str, float]:
    """Run the exported file on the CPU at `batch` (or on `images`, in the model's input format)
    and compare with `eager_gradcam` (float32).

    Returns the relative errors by output; raises `ExportValidationError` when an output is not
    finite (NaN or Inf: weights holding them, or an overflow), when one exceeds its limit for
    the model's precision (LIMITS), or when a resolved class differs. An int8 model is compared
    at the classes it resolved, and the share of top-1 classes it kept is reported. `name`: what
    the messages call the model (default `path`).
    """
    from ..runtime.session import GradCAMSession  # onnxruntime: only when validating

    name = path if name is None else name
    session = GradCAMSession(path, device="cpu")
    meta = session.metadata
    given = images
    if given is not None:
        batch = given.shape[0]
    images, targets = example_inputs(
        batch, meta.image_size, meta.num_targets, meta.num_classes, seed=1
    )
    inputs = images
    if meta.input_format == "uint8_nhwc":  # raw pixels in; eager gets the float path's input
        inputs = example_pixels(batch, meta.image_size, seed=1) if given is None else given
        images = normalize_pixels(inputs, meta.mean, meta.std)
    elif given is not None:
        images = inputs = given
    try:
        got = session(inputs, targets)
    except NonFiniteMapsError as exc:  # compared below, which names the outputs
        got = exc.result
    # an int8 model's maps are compared at the classes it chose; top-1 agreement is reported
    ref_targets = got.target_classes if meta.precision == "int8" else targets
    ref = eager_gradcam(model, images, ref_targets, meta.target_layer)
    if meta.maps:  # the exported method's maps, from the eager activations and gradients
        from ..check.maps import MAP_LIMITS, compare_maps, failing_map_figures, reference_maps

        ref = reference_maps(ref, meta.method, meta.image_size)
    errors = compare_with_reference(got, ref)
    if meta.precision == "int8":
        kept = got.logits.argmax(1).cpu() == ref.logits.argmax(1).cpu()
        errors["top1_kept"] = kept.double().mean().item()
    failed = failing_figures(errors, meta.precision)
    nonfinite = [
        f"{k.removesuffix('_nonfinite')}: {int(v)} elements" for k, v in errors.items()
        if k.endswith("_nonfinite")
    ]  # fmt: skip
    if nonfinite:
        raise ExportValidationError(
            f"{name} ({meta.precision}): the outputs are not finite (NaN or Inf in "
            f"{', '.join(nonfinite)}): the model's weights hold NaN or Inf, or its values "
            "overflow"
        )
    limits = LIMITS[meta.precision]
    if meta.maps:
        map_errors = compare_maps(got, ref)
        errors.update(map_errors)
        failed += failing_map_figures(map_errors, meta.precision)
        limits = {**limits, **MAP_LIMITS[meta.precision]}
    same_classes = torch.equal(got.target_classes.cpu(), ref.target_classes.cpu())
    if failed or not same_classes:
        figures = ", ".join(f"{k} {v:.2e}" for k, v in errors.items())
        raise ExportValidationError(
            f"{name} ({meta.precision}) disagrees with the eager reference at batch {batch}: "
            f"{failed} beyond the limits {limits}; relative errors {figures}; "
            f"target classes {'match' if same_classes else 'differ'}"
        )
    log.info("validated %s: %s", name, errors)
    return errors
