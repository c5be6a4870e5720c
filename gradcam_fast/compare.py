"""Comparing a session's results with the eager reference: error figures and their limits.

Without onnx or onnxruntime, so tests, benchmarks and the GPU check use it wherever they run.
`export.validate_onnx` judges every export with it.
"""

from __future__ import annotations

import torch

from .result import GradCAMResult

__all__ = [
    "LIMITS",
    "NEAR_TIE_SHARE",
    "TOLERANCE",
    "compare_with_reference",
    "failing_figures",
    "relative_error",
]

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
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the error relative to the tensor's scale."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / (scale if scale > 0 else 1.0)


def compare_with_reference(
    got: GradCAMResult, ref: GradCAMResult, tol: float = TOLERANCE
) -> dict[str, float]:
    """Relative errors of each output of `got` against `ref` (two `GradCAMResult`s), the
    Grad-CAM weights (spatial means of the gradients) among them, plus `gradients_beyond_share`:
    the share of gradient elements whose error exceeds `tol` (max-pool near-ties, see
    NEAR_TIE_SHARE). The element-wise `gradients` figure is reported, not judged."""
    errors = {
        name: relative_error(getattr(got, name), getattr(ref, name))
        for name in ("logits", "activations", "cams_lowres")
    }
    errors["weights"] = relative_error(got.weights(), ref.weights())
    if got.gradients is None:  # a channel-weights model (exported with gradients=False)
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
