"""The in-graph maps (`export_onnx(..., maps=True)`, export/maps.py) judged: the eager reference's
maps computed as `GradCAMSession` computes them, the relative errors of a model's `cams` against
them and against torch's post-processing of its own `cams_lowres`, and their limits."""

from __future__ import annotations

from ..cams.methods import cam_lowres
from ..cams.postprocess import upsample_normalize
from ..format.result import GradCAMResult
from .compare import relative_error

__all__ = ["MAP_LIMITS", "compare_maps", "failing_map_figures", "reference_maps"]

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
