"""Non-finite results are errors: a NaN or an infinity is never turned into a map.

Min-max normalization of a map holding NaN gives NaN, and one holding -inf before the ReLU
gives a plausible-looking map of zeros; float16 overflow on a GPU, weights holding NaN or Inf,
or inputs far outside the normalized range can cause either. So every session call checks, per
image, that its logits, activations, gradients (or channel weights) and low-resolution maps are
all finite, and raises `NonFiniteMapsError` naming the images that are not (docs/reliability.md).
"""

from __future__ import annotations

import torch

from ..format.inputs import nonfinite_rows
from ..format.result import GradCAMResult

__all__ = ["NONFINITE", "NonFiniteMapsError", "check_finite", "nonfinite_images"]

# What the command line reports for such an image (after its path).
NONFINITE = (
    "the model's outputs for this image are not finite (NaN or Inf), so no map was made "
    "(weights holding NaN or Inf, or a float16 overflow; see docs/reliability.md)"
)


class NonFiniteMapsError(FloatingPointError):
    """Some images of a batch gave NaN or infinite outputs.

    `indices`: their positions in the batch; `result`: the whole batch's result, with the maps
    (`cams`, `cams_lowres`) of those images set to NaN, so that a caller can keep the others.
    """

    def __init__(self, message: str, indices: list[int], result: GradCAMResult):
        super().__init__(message)
        self.indices = indices
        self.result = result


def nonfinite_images(result: GradCAMResult) -> torch.Tensor:
    """Bool [B]: images whose logits, activations, gradients, channel weights or low-resolution
    maps hold a NaN or an infinity."""
    tensors = (
        result.logits,
        result.activations,
        result.gradients,
        result.channel_weights,
        result.cams_lowres,
    )
    return nonfinite_rows(*(t for t in tensors if t is not None))


def check_finite(result: GradCAMResult) -> GradCAMResult:
    """`result` when every image's outputs are finite; else raise `NonFiniteMapsError` naming
    the images (batch indices) whose are not. Reading the answer waits for the device."""
    bad = nonfinite_images(result)
    if not bad.any():
        return result
    indices = bad.nonzero().flatten().tolist()
    nan = torch.tensor(float("nan"), device=bad.device)
    where = bad[:, None, None, None]
    flagged = GradCAMResult(
        **{
            **vars(result),
            "cams": torch.where(where, nan, result.cams),
            "cams_lowres": torch.where(where, nan, result.cams_lowres),
        }
    )
    shown = ", ".join(map(str, indices[:20])) + (", ..." if len(indices) > 20 else "")
    raise NonFiniteMapsError(
        f"{len(indices)} of {bad.numel()} images gave NaN or infinite outputs (batch indices "
        f"{shown}): their maps would mean nothing. Causes: weights holding NaN or Inf, float16 "
        "overflow (try precision 'float32'), or inputs far outside the normalized range",
        indices,
        flagged,
    )
