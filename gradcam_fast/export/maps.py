"""The maps inside the graph: `export_onnx(..., maps=True)` adds `cams` and `cams_lowres` outputs.

`GradCAMMaps` wraps a Grad-CAM graph (`GradCAMGraph`, or `pixels.RawPixelGradCAM` for uint8
pixels in) and appends, after its outputs, what `GradCAMSession` computes with torch after a
run: the chosen method's low-resolution maps [B, K, h, w] (`methods.METHODS`) and the same maps
upsampled to the input size (bilinear, align_corners=False) and min-max normalized per map
(`postprocess.upsample_normalize`, flat maps -> zeros). The very same torch functions are traced,
so the file returns what the session would: a service in any language runs one ONNX call and
gets the maps, with nothing to re-implement.

Every method but `eigencam` exports: they are plain tensor arithmetic (mean, matmul, einsum,
where, ReLU). Eigen-CAM needs a symmetric eigendecomposition (`torch.linalg.eigh`, in float64),
for which ONNX has no operator. The channel-weights model (`channel_weights_only=True`) carries
Grad-CAM maps only. How an exported model's maps are judged: `check/maps.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cams.methods import cam_lowres, check_method
from ..cams.postprocess import upsample_normalize, weighted_sum
from ..format.metadata import MAP_OUTPUT_NAMES
from ..model.catalog import EXPORTABLE_METHODS

__all__ = [
    "EXPORTABLE_METHODS",
    "MAP_OUTPUT_NAMES",
    "GradCAMMaps",
    "check_exportable",
]


def check_exportable(method: str, channel_weights_only: bool = False) -> str:
    """`method` if it can be computed inside an exported graph, else a ValueError saying why."""
    check_method(method)
    if method not in EXPORTABLE_METHODS:
        raise ValueError(
            f"method {method!r} cannot be exported into the graph: it needs an eigendecomposition "
            f"(torch.linalg.eigh), for which ONNX has no operator; export maps for one of "
            f"{', '.join(EXPORTABLE_METHODS)}, or export without maps and let GradCAMSession "
            f"compute {method} after the run"
        )
    if channel_weights_only and method != "gradcam":
        raise ValueError(
            f"method {method!r} needs the gradients, and the channel-weights model "
            "(channel_weights_only=True) outputs Grad-CAM's channel weights only: use "
            "method='gradcam' or channel_weights_only=False"
        )
    return method


class GradCAMMaps(nn.Module):
    """A Grad-CAM graph whose outputs are followed by `cams` [B,K,S,S] and `cams_lowres` [B,K,h,w]
    of `method`. `gradcam` is the wrapped graph's module (as in `pixels.RawPixelGradCAM`); with
    `channel_weights_only` its fourth output is the channel weights [B,K,C]."""

    def __init__(
        self, graph: nn.Module, method: str, image_size: int, channel_weights_only: bool = False
    ) -> None:
        super().__init__()
        self.gradcam = graph
        self.method = check_exportable(method, channel_weights_only)
        self.image_size = image_size
        self.channel_weights_only = channel_weights_only

    def forward(self, images: torch.Tensor, targets: torch.Tensor):
        logits, classes, activations, grads = self.gradcam(images, targets)
        if self.channel_weights_only:  # channel weights [B, K, C]
            lowres = weighted_sum(grads, activations)
        else:
            lowres = cam_lowres(self.method, activations, grads)
        cams = upsample_normalize(lowres, self.image_size)
        return logits, classes, activations, grads, cams, lowres
