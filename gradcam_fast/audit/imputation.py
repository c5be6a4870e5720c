"""Noisy linear imputation, the "debias" of ROAD (Rong et al., "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022), batched in torch.

Each removed pixel takes the weighted mean of its 8 neighbors (weight 1/6 for the 4 direct ones,
1/12 for the diagonals, renormalized at the image border), known pixels stay fixed:
`W_i x_i - sum_j w_ij x_j = sum_k w_ik v_k` over missing j and known k. That sparse system is
symmetric positive definite, so it is solved by conjugate gradients on whole batches with a 3x3
depthwise convolution as the matrix product (the authors' and pytorch-grad-cam's code builds it
with scipy and solves one image at a time). Then `noise` x N(0, 1) is added to the imputed pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["NEIGHBOR_WEIGHTS", "impute"]

NEIGHBOR_WEIGHTS = torch.tensor(
    [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64
)


def _neighbors(x: torch.Tensor) -> torch.Tensor:
    """sum_j w_ij x_j over the 8 neighbors (zero outside the image), per channel."""
    c = x.shape[1]
    kernel = NEIGHBOR_WEIGHTS.to(x)[None, None].expand(c, 1, 3, 3)
    return F.conv2d(x, kernel, padding=1, groups=c)


def impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    seeds: Sequence[int] | None = None,
    tol: float = 1e-6,
    max_iter: int = 5000,
) -> torch.Tensor:
    """`images` [B, C, H, W] with the pixels where `removed` [B, H, W] is True replaced by the
    linear imputation from their neighbors, plus `noise` x N(0, 1) drawn from one generator per
    image seeded with `seeds[i]` (default 0: the result does not depend on the batch it ran in).
    Solved in float64 to a relative residual under `tol`."""
    x0 = images.to(torch.float64)
    miss = removed.to(torch.float64)[:, None].expand_as(x0)
    known = 1.0 - miss
    ones = torch.ones_like(miss[:, :1])
    diag = _neighbors(ones).expand_as(x0)  # W_i: the weights of the neighbors inside the image
    b = _neighbors(x0 * known) * miss

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return (diag * v - _neighbors(v * miss)) * miss

    x = torch.zeros_like(x0)
    r = b.clone()
    z = r / diag
    p = z.clone()
    rz = (r * z).flatten(1).sum(1)
    norm_b = b.flatten(1).norm(dim=1).clamp_min(1e-30)
    for _ in range(max_iter):
        if (r.flatten(1).norm(dim=1) / norm_b).max() < tol:
            break
        ap = matvec(p)
        denom = (p * ap).flatten(1).sum(1)
        alpha = torch.where(denom > 0, rz / denom.clamp_min(1e-300), torch.zeros_like(rz))
        x = x + alpha[:, None, None, None] * p
        r = r - alpha[:, None, None, None] * ap
        z = r / diag
        rz_new = (r * z).flatten(1).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        p = z + beta[:, None, None, None] * p
        rz = rz_new
    out = x0 * known + x * miss
    if noise:
        seeds = [0] * len(x0) if seeds is None else list(seeds)
        jitter = torch.stack(
            [
                torch.randn(
                    x0.shape[1:], generator=torch.Generator().manual_seed(s), dtype=torch.float64
                )
                for s in seeds
            ]
        )
        out = out + noise * jitter * miss
    return out.to(images.dtype)
