"""Comparing a session's results with the eager reference: error figures and their limits.

Without onnx or onnxruntime, so tests, benchmarks and the GPU check use it wherever they run.
`export.validate.validate_onnx` judges every export with it.
"""

from __future__ import annotations

import math

import torch

from ..format.result import GradCAMResult

__all__ = [
    "LIMITS",
    "NEAR_TIE_SHARE",
    "TOLERANCE",
    "compare_with_reference",
    "failing_figures",
    "map_correlations",
    "relative_error",
]

TOLERANCE = 1e-4  # relative error of float32 outputs against the eager reference
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
    # An int8 body (runtime/ort_quantize.py) moves the activations by a few % of their range: single
    # logits, channel weights and gradient elements move by more, most maps keep their shape.
    # So int8 is judged on logits and activations (relative error) and on the maps' Pearson
    # correlation with the reference: `cams_lowres_decorrelation` = 1 - the median per-map
    # correlation, at most 0.05 (a broken quantization gives correlations far below 0.9; tiny
    # random networks on noise, the validation's worst case, reach 0.02-0.03). The worst map is
    # reported, not judged: near-empty maps (few positive pixels) fall far lower. Issue 13's
    # fidelity (median >= 0.98, worst >= 0.95 on photos) is asserted on a trained network in
    # tests/test_quantize.py and measured on VGG19 by benchmarks/lowp.py.
    "int8": {"logits": 0.1, "activations": 0.25, "cams_lowres_decorrelation": 0.05},
    # A bfloat16 body (torch backend on the CPU) keeps 8 significant bits: judged like int8.
    "bfloat16": {"logits": 0.1, "activations": 0.25, "cams_lowres_decorrelation": 0.05},
}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|: the error relative to the tensor's scale; `inf`
    when either tensor holds a NaN or an infinity (no non-finite value ever passes a check)."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if not (torch.isfinite(actual).all() and torch.isfinite(expected).all()):
        return float("inf")
    scale = expected.abs().max().item()
    return (actual - expected).abs().max().item() / (scale if scale > 0 else 1.0)


def map_correlations(got: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each map of `got` with the same map of `ref` ([..., h, w] ->
    [...]). Two constant maps correlate 1 (neither has a shape), one constant map 0; NaN where
    either map is not finite."""
    a, b = (t.detach().double().cpu().flatten(-2) for t in (got, ref))
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    flat_a = a.abs().amax(-1) <= 1e-12 * got.detach().double().abs().flatten(-2).amax(-1).cpu()
    flat_b = b.abs().amax(-1) <= 1e-12 * ref.detach().double().abs().flatten(-2).amax(-1).cpu()
    corr = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    corr = torch.where(flat_a | flat_b, torch.zeros_like(corr), corr)
    return torch.where(flat_a & flat_b, torch.ones_like(corr), corr)


def compare_with_reference(
    got: GradCAMResult, ref: GradCAMResult, tol: float = TOLERANCE
) -> dict[str, float]:
    """Relative errors of each output of `got` against `ref` (two `GradCAMResult`s), the
    Grad-CAM weights (spatial means of the gradients) among them, plus `gradients_beyond_share`:
    the share of gradient elements whose error exceeds `tol` (max-pool near-ties, see
    NEAR_TIE_SHARE). The element-wise `gradients` figure is reported, not judged. An output
    that either result lacks (None: a library that returns only some of them) has no figure.

    An output holding NaN or an infinity (in `got` or `ref`) gets the error `inf` and an extra
    figure `<output>_nonfinite`: how many of its elements are not finite (in `got`, else in
    `ref`); `failing_figures` fails every such figure, whatever the precision."""
    names = ("logits", "activations", "cams_lowres", "weights", "gradients")
    errors: dict[str, float] = {}
    for name in names:
        a = _output(got, name)
        b = None if a is None else _output(ref, name)
        if a is None or b is None:  # not there: no gradients (the channel-weights model)
            continue
        a, b = a.detach().double().cpu(), b.detach().double().cpu()
        bad = int((~torch.isfinite(a)).sum()) or int((~torch.isfinite(b)).sum())
        if bad:
            errors[name] = float("inf")
            errors[f"{name}_nonfinite"] = float(bad)
            if name == "gradients":
                errors["gradients_beyond_share"] = float("inf")
        elif name != "gradients":
            errors[name] = relative_error(a, b)
        else:
            diff, scale = (a - b).abs(), b.abs().max().item() or 1.0
            errors["gradients_beyond_share"] = (diff > tol * scale).double().mean().item()
            errors["gradients"] = diff.max().item() / scale
    if "cams_lowres_nonfinite" in errors:  # no correlation of a map holding NaN or Inf
        errors["cams_lowres_decorrelation"] = errors["cams_lowres_worst_decorrelation"] = math.inf
    elif "cams_lowres" in errors:  # lower precisions: judged on the maps' shape (LIMITS["int8"])
        corr = map_correlations(got.cams_lowres, ref.cams_lowres).flatten()
        errors["cams_lowres_decorrelation"] = 1.0 - corr.median().item()
        errors["cams_lowres_worst_decorrelation"] = 1.0 - corr.min().item()
    return errors


def _output(result: GradCAMResult, name: str) -> torch.Tensor | None:
    """One output of `result`, the channel weights as `weights`; None where it has none (a
    result from another library exposes only some outputs)."""
    if name != "weights":
        return getattr(result, name)
    if result.gradients is None and result.channel_weights is None:
        return None
    return result.weights()


def failing_figures(errors: dict[str, float], precision: str = "float32") -> list[str]:
    """Names of the figures in `errors` beyond the LIMITS of `precision`, NaN figures among
    them, and every `<output>_nonfinite` count (a non-finite output fails at any precision)."""
    limits = LIMITS[precision]
    return [
        k
        for k, v in errors.items()
        if (k in limits and not v <= limits[k]) or (k.endswith("_nonfinite") and v != 0)
    ]
