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
for which ONNX has no operator. A model exported with `gradients=False` (channel weights only)
carries Grad-CAM maps only.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cams.methods import cam_lowres, check_method
from ..cams.postprocess import upsample_normalize, weighted_sum
from ..check.compare import relative_error
from ..format.metadata import MAP_OUTPUT_NAMES
from ..format.result import GradCAMResult
from ..model.catalog import EXPORTABLE_METHODS

__all__ = [
    "EXPORTABLE_METHODS",
    "MAP_LIMITS",
    "MAP_OUTPUT_NAMES",
    "GradCAMMaps",
    "check_exportable",
    "compare_maps",
    "failing_map_figures",
    "reference_maps",
]

# Limits of `compare_maps`' figures by precision. `cams` (against the eager reference) is judged
# in float32 only: a float16 body moves the low-resolution maps by up to 5% (check.compare.LIMITS),
# and min-max normalization can magnify that where a map is nearly flat. `cams_postprocess` (the
# graph's cams against torch's post-processing of the graph's own cams_lowres) checks the
# in-graph upsampling and min-max. In a float16 model (export.float16) ONNX Runtime's
# converter keeps those ops in float32 but casts the tensors between them to float16 and back,
# so they are rounded to float16 between ops: 1.1e-3 measured on a tiny VGG, judged at 5e-3.
MAP_LIMITS = {
    "float32": {"cams": 1e-4, "cams_postprocess": 1e-4},
    "float16": {"cams_postprocess": 5e-3},
}


def check_exportable(method: str, gradients: bool = True) -> str:
    """`method` if it can be computed inside an exported graph, else a ValueError saying why."""
    check_method(method)
    if method not in EXPORTABLE_METHODS:
        raise ValueError(
            f"method {method!r} cannot be exported into the graph: it needs an eigendecomposition "
            f"(torch.linalg.eigh), for which ONNX has no operator; export maps for one of "
            f"{', '.join(EXPORTABLE_METHODS)}, or export without maps and let GradCAMSession "
            f"compute {method} after the run"
        )
    if not gradients and method != "gradcam":
        raise ValueError(
            f"method {method!r} needs the gradients, and a model exported with gradients=False "
            "outputs Grad-CAM's channel weights only: use method='gradcam' or gradients=True"
        )
    return method


class GradCAMMaps(nn.Module):
    """A Grad-CAM graph whose outputs are followed by `cams` [B,K,S,S] and `cams_lowres` [B,K,h,w]
    of `method`. `gradcam` is the wrapped graph's module (as in `pixels.RawPixelGradCAM`); with
    `gradients=False` its fourth output is the channel weights [B,K,C]."""

    def __init__(
        self, graph: nn.Module, method: str, image_size: int, gradients: bool = True
    ) -> None:
        super().__init__()
        self.gradcam = graph
        self.method = check_exportable(method, gradients)
        self.image_size = image_size
        self.gradients = gradients

    def forward(self, images: torch.Tensor, targets: torch.Tensor):
        logits, classes, activations, grads = self.gradcam(images, targets)
        if self.gradients:
            lowres = cam_lowres(self.method, activations, grads)
        else:  # channel weights [B, K, C]
            lowres = weighted_sum(grads, activations)
        cams = upsample_normalize(lowres, self.image_size)
        return logits, classes, activations, grads, cams, lowres


def reference_maps(ref: GradCAMResult, method: str, image_size: int) -> GradCAMResult:
    """The eager reference `ref` (activations and gradients from hooks) with its maps replaced
    by `method`'s, computed in torch as `GradCAMSession` does after a run."""
    lowres = cam_lowres(method, ref.activations, ref.gradients)
    fields = {**vars(ref), "cams_lowres": lowres, "cams": upsample_normalize(lowres, image_size)}
    return GradCAMResult(**fields)


def compare_maps(got: GradCAMResult, ref: GradCAMResult) -> dict[str, float]:
    """Relative errors of a maps model's in-graph `cams`: against `ref` (see `reference_maps`)
    and against torch's post-processing of the model's own `cams_lowres`."""
    image_size = tuple(got.cams.shape[-2:])
    return {
        "cams": relative_error(got.cams, ref.cams),
        "cams_postprocess": relative_error(
            got.cams, upsample_normalize(got.cams_lowres, image_size)
        ),
    }


def failing_map_figures(errors: dict[str, float], precision: str = "float32") -> list[str]:
    """Names of the figures in `errors` beyond MAP_LIMITS of `precision` (NaN fails)."""
    limits = MAP_LIMITS[precision]
    return [k for k, v in errors.items() if k in limits and not v <= limits[k]]
