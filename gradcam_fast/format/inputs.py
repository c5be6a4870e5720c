"""Checking and converting what callers pass as images and targets, with errors that say the fix."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["as_image_batch", "as_pixel_batch", "as_targets", "nonfinite_rows"]


def _from_numpy(array: np.ndarray, what: str) -> torch.Tensor:
    """A tensor of `array`'s values: byte order made native, float128 narrowed to float64, masked
    arrays refused (their mask would be silently dropped)."""
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError(f"{what} must be a plain array, not a masked array: fill it first")
    if array.dtype.kind == "f" and array.dtype.itemsize > 8:
        array = array.astype(np.float64)  # longdouble: torch has no such dtype
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))  # big-endian data: same values
    try:
        return torch.from_numpy(np.ascontiguousarray(array))
    except TypeError:
        raise TypeError(f"{what} has a dtype torch cannot hold: {array.dtype}") from None


def _check_dense(tensor: torch.Tensor, what: str) -> None:
    """Refuse tensors without plain strided data (sparse, nested, quantized, meta)."""
    if (
        tensor.layout != torch.strided
        or tensor.is_nested
        or tensor.is_quantized
        or tensor.device.type == "meta"
    ):
        kind = (
            "nested"
            if tensor.is_nested
            else "quantized"
            if tensor.is_quantized
            else ("meta" if tensor.device.type == "meta" else str(tensor.layout))
        )
        raise TypeError(f"{what} must be a dense tensor with data, got a {kind} tensor")


def nonfinite_rows(*tensors: torch.Tensor) -> torch.Tensor:
    """Bool [B]: the rows (first axis) where any of `tensors` (each [B, ...], floating point,
    on one device) holds a NaN or an infinity.

    A row's sum (in float32 at least) is not finite whenever one of its elements is not, and
    summing is many times faster than testing every element; only when a sum is not finite
    (a NaN or an infinity, or finite values whose sum overflows) are the elements tested. One
    device synchronization when all is finite.
    """
    sums = torch.stack(
        [
            t.reshape(t.shape[0], -1).sum(dim=1, dtype=torch.promote_types(t.dtype, torch.float32))
            for t in tensors
        ]
    )
    suspect = ~torch.isfinite(sums).all(dim=0)
    if not bool(suspect.any()):
        return suspect
    exact = torch.zeros_like(suspect)
    for t in tensors:
        exact |= ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
    return exact


def _check_size(
    images: torch.Tensor, height_width: tuple, image_size: int | None, expected: str
) -> None:
    """Refuse images of another size than the model's, and an empty batch."""
    if image_size is not None and height_width != (image_size, image_size):
        raise ValueError(
            f"expected {expected} (the model was exported for {image_size}x{image_size}), got "
            f"{list(images.shape)}: resize/crop the images or export the model again with that "
            "image_size"
        )
    if images.shape[0] == 0:
        raise ValueError("empty batch: pass at least one image")


def as_image_batch(
    images: torch.Tensor | np.ndarray,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A contiguous float32 [B, 3, S, S] tensor on `device` from a tensor or array.

    Accepts one image [3, S, S]. float16/bfloat16/float64 are converted to float32; integer and
    bool images are refused (the model expects pixels normalized with its mean/std).
    """
    if isinstance(images, np.ndarray):
        if images.dtype == object or not (
            np.issubdtype(images.dtype, np.number) or images.dtype == bool
        ):
            raise TypeError(f"images must be a numeric array, got dtype {images.dtype}")
        images = _from_numpy(images, "images")
    elif not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be a torch.Tensor or numpy.ndarray [B,3,S,S], got {type(images).__name__}"
        )
    _check_dense(images, "images")
    if not images.is_floating_point():
        raise TypeError(
            f"images must be floating point, normalized with the model's mean/std; got {images.dtype}."
            " Convert decoded pixels with gradcam_fast.io.images.preprocess"
            " (or x / 255 then normalize)."
        )
    if images.ndim == 3:
        images = images.unsqueeze(0)
    expected = f"[B, 3, {image_size}, {image_size}]" if image_size else "[B, 3, S, S]"
    if images.ndim != 4 or images.shape[1] != 3:
        hint = (
            " (channels last? use x.permute(0, 3, 1, 2))"
            if images.ndim == 4 and images.shape[-1] == 3
            else ""
        )
        raise ValueError(f"expected images of shape {expected}, got {list(images.shape)}{hint}")
    _check_size(images, tuple(images.shape[-2:]), image_size, f"images of shape {expected}")
    images = images.to(device=device, dtype=torch.float32).contiguous()
    if bool(nonfinite_rows(images).any()):
        bad = int((~torch.isfinite(images)).sum())
        raise ValueError(
            f"images contain {bad} NaN or infinite values (after conversion to float32); "
            "Grad-CAM of such input is undefined"
        )
    return images


def as_pixel_batch(
    images: torch.Tensor | np.ndarray,
    image_size: int | None = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A contiguous uint8 [B, S, S, 3] tensor on `device`, for models exported with raw_pixels.

    Decoded RGB pixels as they come (channels last, 0-255); one image [S, S, 3] is accepted.
    Other dtypes are refused rather than cast: a float array may already be scaled or normalized.
    """
    if not isinstance(images, torch.Tensor | np.ndarray):
        raise TypeError(
            f"images must be a uint8 torch.Tensor or numpy.ndarray [B,S,S,3], got {type(images).__name__}"
        )
    if images.dtype not in (torch.uint8, np.uint8):
        raise TypeError(
            f"this model takes raw uint8 pixels [B, S, S, 3] (exported with raw_pixels=True), got "
            f"{images.dtype}: pass the decoded pixels as uint8, or use a model exported without "
            "raw_pixels for normalized float input"
        )
    if isinstance(images, np.ndarray):
        images = _from_numpy(images, "images")
    _check_dense(images, "images")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    size = image_size or "S"
    expected = f"[B, {size}, {size}, 3]"
    if images.ndim != 4 or images.shape[-1] != 3:
        hint = (
            " (channels first? use x.permute(0, 2, 3, 1))"
            if images.ndim == 4 and images.shape[1] == 3
            else ""
        )
        raise ValueError(
            f"expected uint8 images of shape {expected}, got {list(images.shape)}{hint}"
        )
    _check_size(images, tuple(images.shape[1:3]), image_size, f"uint8 images of shape {expected}")
    return images.to(device=device).contiguous()


def as_targets(
    targets: int | Sequence[int] | np.ndarray | torch.Tensor | None,
    batch: int,
    num_targets: int | None,
    num_classes: int,
) -> torch.Tensor:
    """Targets as int64 [B, K] (CPU). t >= 0 is a class index, -r the r-th highest logit.

    None means the top K classes; an int the same class for every image (K = 1); a sequence of B
    ints one class per image (K = 1); a [B, K] array one row per image. `num_targets=None` takes
    K from the targets (the eager reference has no fixed K).
    """
    k = num_targets
    if targets is None:
        k = k or 1
        return torch.arange(-1, -k - 1, -1, dtype=torch.int64).expand(batch, k).contiguous()
    if isinstance(targets, numbers.Integral) and not isinstance(targets, bool):
        if not -num_classes <= int(targets) < num_classes:  # also before an int64 overflow
            raise _out_of_range(int(targets), num_classes)
        t = torch.full((batch, 1), int(targets), dtype=torch.int64)
    else:
        if isinstance(targets, np.ndarray):
            if targets.dtype == object:
                raise TypeError("targets must be an integer array, got dtype object")
            targets = _from_numpy(targets, "targets")
        elif not isinstance(targets, torch.Tensor):
            try:
                targets = torch.as_tensor(targets)
            except (TypeError, ValueError, RuntimeError) as exc:
                if "overflow" in str(exc).lower():
                    raise ValueError(
                        f"a target in {targets!r} is too large to be a class index or a rank"
                    ) from None
                raise TypeError(
                    f"targets must be None, an int, B ints or a [B, K] array; got {targets!r}"
                ) from exc
            if targets.numel() == 0:  # [] is float32 to torch; it is zero targets here
                targets = targets.to(torch.int64)
        _check_dense(targets, "targets")
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise TypeError(
                f"targets must be integers (class indices or -rank), got {targets.dtype}"
            )
        t = targets.detach().to("cpu", torch.int64)
        if t.ndim == 0:
            t = t.reshape(1, 1).expand(batch, 1)
        elif t.ndim == 1:
            if t.shape[0] != batch:
                raise ValueError(
                    f"got {t.shape[0]} targets for a batch of {batch} images: pass one class per "
                    "image, or a [B, K] array"
                )
            t = t.reshape(batch, 1)
        elif t.ndim != 2 or t.shape[0] != batch:
            raise ValueError(f"targets must have shape [{batch}, K], got {list(t.shape)}")
    if k is not None and t.shape[1] != k:
        raise ValueError(
            f"this model computes {k} map(s) per image, got {t.shape[1]} target(s) per image: "
            f"pass targets of shape [{batch}, {k}] (or export with num_targets={t.shape[1]})"
        )
    out_of_range = (t >= num_classes) | (t < -num_classes)
    if bool(out_of_range.any()):
        raise _out_of_range(int(t[out_of_range][0]), num_classes)
    return t.contiguous()


def _out_of_range(bad: int, num_classes: int) -> ValueError:
    return ValueError(
        f"target {bad} is out of range for a model with {num_classes} classes: use a class "
        f"index 0..{num_classes - 1} or a rank -1..-{num_classes} (-1 = predicted class)"
    )
