"""The checks every benchmarked way of computing maps passes before it is timed: a contender's
output against the eager reference at its registry entry's precision (`check_output`), and two
ways of computing the same maps against each other (`check_agreement`). Both build on
`gradcam_fast.check.compare`; NaN and Inf always fail."""

from __future__ import annotations

import torch

from benchmarks.contenders import CONTENDERS, ContenderSpec, exposed
from gradcam_fast.check.compare import (
    LIMITS,
    compare_with_reference,
    failing_figures,
    relative_error,
)
from gradcam_fast.format.result import GradCAMResult

__all__ = ["CAM_ATOL", "check_agreement", "check_output"]

CAM_ATOL = 1e-3  # upsampled maps in [0, 1]; other libraries resize/normalize in other orders


def check_agreement(
    what: str, got: torch.Tensor, expected: torch.Tensor, limit: float = 1e-4
) -> float:
    """The relative error of `got` against `expected` (`gradcam_fast.check.compare`'s), for two
    ways of computing the same maps; raises AssertionError saying `what` disagree when the shapes
    differ or the error is not under `limit` (NaN and Inf never are)."""
    error = relative_error(got, expected)
    if got.shape != expected.shape or not error < limit:
        raise AssertionError(f"{what} disagree: relative error {error:.2e}")
    return error


def check_output(
    name: str, got: GradCAMResult, reference: GradCAMResult, precision: str | None = None
) -> dict[str, float]:
    """Compare a contender's output with the eager reference: every output it exposes, judged as
    export validation judges (`gradcam_fast.check.compare`) at its precision (its registry
    entry's unless given), at float32 also the upsampled maps (CAM_ATOL); a floor on its logits
    alone. Raises AssertionError naming the contender and the figures, or the output holding NaN
    or Inf. Returns the judged figures."""
    for output, tensor in vars(got).items():
        if bad := 0 if tensor is None else int((~torch.isfinite(tensor.float())).sum()):
            what = f"{bad} non-finite values (NaN or Inf) of {tensor.numel()}"
            raise AssertionError(f"{name}: {output} holds {what}")
    spec = CONTENDERS.get(name, ContenderSpec(name, None))
    precision = precision or spec.precision
    limits = {**LIMITS[precision], **({"cams": CAM_ATOL} if precision == "float32" else {})}
    if spec.floor:
        got = exposed(logits=got.logits)
    elif got.cams is None and got.cams_lowres is None:
        raise AssertionError(f"{name}: produced neither maps nor low-resolution maps to check")
    elif got.target_classes is not None and not torch.equal(
        got.target_classes.cpu(), reference.target_classes.cpu()
    ):
        classes = f"{got.target_classes} != {reference.target_classes}"
        raise AssertionError(f"{name}: explained classes {classes}")
    errors = compare_with_reference(got, reference)
    if got.cams is not None:
        if got.cams.shape != reference.cams.shape:
            shapes = f"{list(got.cams.shape)}, reference {list(reference.cams.shape)}"
            raise AssertionError(f"{name}: maps of shape {shapes}")
        diff = got.cams.detach().double().cpu() - reference.cams.double().cpu()
        errors["cams"] = diff.abs().max().item()
    failed = failing_figures(errors, precision)
    if "cams" in limits and not errors.get("cams", 0.0) <= limits["cams"]:
        failed.append("cams")
    correlated = precision in ("int8", "bfloat16")  # judged on the maps' correlation
    shown = {*limits, "cams_lowres_worst_decorrelation"} if correlated else limits
    errors = {k: float(v) for k, v in errors.items() if k in shown}  # the judged figures
    if failed and spec.floor:
        raise AssertionError(
            f"{name}: logits differ from the eager model's by {errors['logits']:.2e} "
            f"(relative, tolerance {limits['logits']:.0e})"
        )
    if failed:
        raise AssertionError(
            f"{name}: maps differ from the eager reference ({failed} beyond the {precision} "
            f"limits): {errors}"
        )
    return errors
