"""int8 calibration sets: a folder of photos or a tensor, as a batch in the model's input format.

ONNX Runtime's int8 (`runtime.ort_quantize`), OpenVINO's (`runtime.ov_quantize`), the session's
int8 cache and `export_onnx(..., precision="int8")` all read their calibration images here, so a
folder is listed as `explain` lists it (`discover.image_files`: hidden files skipped) and read
and preprocessed as `explain` reads it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .discover import image_files
from .images import ImageError, Preprocessing, load_image, model_view, to_tensor

__all__ = [
    "CALIBRATION_BATCH",
    "MIN_CALIBRATION_IMAGES",
    "calibration_batches",
    "calibration_fingerprint",
    "calibration_images",
]

# Fewer images give activation ranges that the next photo exceeds (clipped activations);
# benchmarks/lowp.py calibrates VGG19 on 8 photos and judges it on 8 others.
MIN_CALIBRATION_IMAGES = 8
CALIBRATION_BATCH = 4  # images per calibration run (bounds the augmented model's memory)


def calibration_images(
    calibration: str | os.PathLike | torch.Tensor | np.ndarray,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    raw_pixels: bool = False,
    preprocessing: Preprocessing | None = None,
) -> torch.Tensor:
    """The calibration batch: a folder of image files (read and preprocessed like `explain`
    does, resized and cropped as `preprocessing` says, default VGG's 256/224 bilinear;
    unreadable files are skipped with a warning naming them) or a tensor already in the
    model's input format (float [N,3,S,S] normalized, or uint8 [N,S,S,3] with raw_pixels).
    Refuses fewer than MIN_CALIBRATION_IMAGES."""
    if isinstance(calibration, np.ndarray):
        calibration = torch.from_numpy(calibration)
    if isinstance(calibration, torch.Tensor):
        x, source = calibration.detach().cpu(), "the calibration tensor"
        want = (image_size, image_size, 3) if raw_pixels else (3, image_size, image_size)
        dtype = torch.uint8 if raw_pixels else torch.float32
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"calibration tensor must be [N, {', '.join(map(str, want))}] (the model's input "
                f"format), got {list(x.shape)}"
            )
        x = x.to(dtype)
        if not raw_pixels and not torch.isfinite(x).all():
            raise ValueError("calibration tensor has NaN or infinite values")
    elif isinstance(calibration, str | os.PathLike):
        x, source = _read_folder(
            Path(calibration), image_size, mean, std, raw_pixels, preprocessing or {}
        )
    else:
        raise TypeError(
            "calibration must be a folder of images or a tensor of preprocessed images, got "
            f"{type(calibration).__name__}"
        )
    if x.shape[0] < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"int8 calibration needs at least {MIN_CALIBRATION_IMAGES} images, got {x.shape[0]}"
            f" (readable) from {source}: add {MIN_CALIBRATION_IMAGES - x.shape[0]} or more "
            "photos like those the model will explain"
        )
    return x.contiguous()


def _folder_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(
            f"calibration folder {str(folder)!r} does not exist or is not a folder"
        )
    return image_files(folder)


def _read_folder(
    folder: Path,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    raw_pixels: bool,
    preprocessing: Preprocessing | dict,
) -> tuple[torch.Tensor, str]:
    images, skipped = [], []
    for path in _folder_files(folder):
        try:
            pixels = model_view(load_image(path), image_size, **preprocessing)
        except ImageError as exc:
            skipped.append(f"{path.name} ({' '.join(str(exc).split())})")
            continue
        images.append(
            torch.from_numpy(pixels.copy()) if raw_pixels else to_tensor(pixels, mean, std)
        )
    if skipped:
        warnings.warn(
            f"calibration: skipped {len(skipped)} unreadable file(s) in {folder}: "
            + "; ".join(skipped),
            stacklevel=3,
        )
    if not images:
        shape = (0, image_size, image_size, 3) if raw_pixels else (0, 3, image_size, image_size)
        return torch.zeros(shape), f"folder {str(folder)!r}"
    return torch.stack(images), f"folder {str(folder)!r}"


def calibration_fingerprint(calibration: str | os.PathLike | torch.Tensor) -> str:
    """A short hash of a calibration set (file names, sizes and contents of a folder's images,
    or a tensor's bytes), for cache keys: a different set gives a different exported model."""
    digest = hashlib.sha256()
    if isinstance(calibration, torch.Tensor):
        digest.update(calibration.detach().cpu().contiguous().numpy().tobytes())
    else:
        folder = Path(calibration)
        for path in _folder_files(folder):
            digest.update(str(path.relative_to(folder)).encode() + b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def calibration_batches(images: torch.Tensor, num_targets: int) -> list[dict[str, np.ndarray]]:
    """The model's inputs for calibration runs: CALIBRATION_BATCH images at a time, every
    target -1 (the predicted class; the body below the target does not depend on it)."""
    return [
        {
            "images": images[i : i + CALIBRATION_BATCH].numpy(),
            "targets": np.full((len(images[i : i + CALIBRATION_BATCH]), num_targets), -1),
        }
        for i in range(0, len(images), CALIBRATION_BATCH)
    ]
