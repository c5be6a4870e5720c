"""The input's normalization: ImageNet's mean/std and uint8 RGB pixels -> normalized float32.

One arithmetic, torchvision's `ToTensor` + `Normalize` ((x / 255 - mean) / std), shared by the
image files read in Python (`io.images.to_tensor`) and by the graph of a model exported with
`raw_pixels` (`export.pixels.RawPixels`), so the float path and the raw path see the same
numbers. Kept in the format layer: the model loader, the image reader and the exporter all
need these values, and none of them should import another for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "channel_values",
    "normalize_nhwc",
    "normalize_pixels",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_values(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """Three per-channel values (RGB) as a float32 [1, 3, 1, 1] tensor on `device`."""
    if len(values) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {values}")
    return torch.tensor(values, dtype=torch.float32, device=device).reshape(1, 3, 1, 1)


def normalize_nhwc(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The one place of the arithmetic: uint8 NHWC -> (x / 255 - mean) / std as float32 NCHW
    (`mean`, `std` from `channel_values`)."""
    x = pixels.permute(0, 3, 1, 2).to(torch.float32)
    return x.div(255).sub(mean).div(std)


def normalize_pixels(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 [B, S, S, 3] RGB -> float32 [B, 3, S, S], (x / 255 - mean) / std per channel."""
    device = pixels.device
    return normalize_nhwc(pixels, channel_values(mean, device), channel_values(std, device))
