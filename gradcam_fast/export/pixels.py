"""Raw decoded pixels in, inside the graph: uint8 [B, S, S, 3] -> normalized float32 [B, 3, S, S].

A model exported with `export_onnx(..., raw_pixels=True)` starts with `RawPixels`, so a service
sends decoded RGB pixels as they come from the image decoder (NHWC, uint8) and the cast, the
scaling to [0, 1] and the normalization with the model's mean/std run in ONNX Runtime, on the
same device as the network. The arithmetic is `format.preprocessing.normalize_nhwc`, the one
the image reader uses too, so the float path and the raw path see the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..format.preprocessing import channel_values, normalize_nhwc

__all__ = ["RawPixelGradCAM", "RawPixels"]


class RawPixels(nn.Module):
    """`normalize_pixels` as a module, with mean/std as buffers (constants in the ONNX graph)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", channel_values(mean, torch.device("cpu")))
        self.register_buffer("std", channel_values(std, torch.device("cpu")))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalize_nhwc(pixels, self.mean, self.std)


class RawPixelGradCAM(nn.Module):
    """A Grad-CAM graph (e.g. `GradCAMGraph`) behind `RawPixels`: (uint8 images, targets) in,
    the graph's outputs out."""

    def __init__(self, graph: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.pixels = RawPixels(mean, std)
        self.gradcam = graph  # not `graph`: that name is GraphModule's in torch.export

    def forward(self, images: torch.Tensor, targets: torch.Tensor):
        return self.gradcam(self.pixels(images), targets)
