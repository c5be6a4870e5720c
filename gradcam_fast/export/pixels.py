"""Raw decoded pixels in, inside the graph: uint8 [B, S, S, 3] -> normalized float32 [B, 3, S, S].

A model exported with `export_onnx(..., raw_pixels=True)` starts with `RawPixels`, so a service
sends decoded RGB pixels as they come from the image decoder (NHWC, uint8) and the cast, the
scaling to [0, 1] and the normalization with the model's mean/std run in ONNX Runtime, on the
same device as the network. The arithmetic is torchvision's `ToTensor` + `Normalize`
((x / 255 - mean) / std), so the float path and the raw path see the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["RawPixelGradCAM", "RawPixels", "normalize_pixels"]


def _channels(values: Sequence[float], device: torch.device) -> torch.Tensor:
    if len(values) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got {values}")
    return torch.tensor(values, dtype=torch.float32, device=device).reshape(1, 3, 1, 1)


def _normalize(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The one place of the arithmetic: uint8 NHWC -> (x / 255 - mean) / std as float32 NCHW."""
    x = pixels.permute(0, 3, 1, 2).to(torch.float32)
    return x.div(255).sub(mean).div(std)


def normalize_pixels(
    pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 [B, S, S, 3] RGB -> float32 [B, 3, S, S], (x / 255 - mean) / std per channel."""
    return _normalize(pixels, _channels(mean, pixels.device), _channels(std, pixels.device))


class RawPixels(nn.Module):
    """`normalize_pixels` as a module, with mean/std as buffers (constants in the ONNX graph)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", _channels(mean, torch.device("cpu")))
        self.register_buffer("std", _channels(std, torch.device("cpu")))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return _normalize(pixels, self.mean, self.std)


class RawPixelGradCAM(nn.Module):
    """A Grad-CAM graph (e.g. `GradCAMGraph`) behind `RawPixels`: (uint8 images, targets) in,
    the graph's outputs out."""

    def __init__(self, graph: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.pixels = RawPixels(mean, std)
        self.gradcam = graph  # not `graph`: that name is GraphModule's in torch.export

    def forward(self, images: torch.Tensor, targets: torch.Tensor):
        return self.gradcam(self.pixels(images), targets)
