"""From activations and gradients to heatmaps: batched torch ops on the tensors' own device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gradcam_lowres", "upsample_normalize", "weighted_sum"]


def gradcam_lowres(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c w_c A_c) with w_c the spatial mean of the gradients.

    activations [B, C, h, w], gradients [B, K, C, h, w] -> [B, K, h, w]; the weighted sum over
    channels for all K classes is one batched matmul.
    """
    return weighted_sum(gradients.mean(dim=(-2, -1)), activations)


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c weights[b,k,c] A[b,c]): weights [B, K, C], activations [B, C, h, w] ->
    [B, K, h, w], one batched matmul."""
    b, c, h, w = activations.shape
    cams = torch.bmm(weights, activations.reshape(b, c, h * w))  # [B, K, h*w]
    return cams.relu_().reshape(b, -1, h, w)


def upsample_normalize(cams_lowres: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (align_corners=False) to `size`, then min-max of each map into [0, 1].

    A flat map (all values equal, e.g. all zero after the ReLU) becomes zeros, never NaN. Flatness
    is judged on the low-resolution map, where it is exact: interpolating a constant map can leave
    one-ulp ripples that min-max would blow up into noise.
    """
    b, k = cams_lowres.shape[:2]
    low_min, low_max = cams_lowres.reshape(b, k, -1).aminmax(dim=-1, keepdim=True)
    is_flat = (low_max - low_min) <= 0
    up = F.interpolate(cams_lowres, size=size, mode="bilinear", align_corners=False)
    flat = up.reshape(b, k, -1)
    low, high = flat.aminmax(dim=-1, keepdim=True)
    span = high - low
    span = torch.where(is_flat | (span <= 0), torch.full_like(span, float("inf")), span)
    flat.sub_(low).div_(span)
    return up
