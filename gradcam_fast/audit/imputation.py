"""Noisy linear imputation, the "debias" of ROAD (Rong et al., "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022).

Each removed pixel takes the weighted mean of its 8 neighbors (weight 1/6 for the 4 direct ones,
1/12 for the diagonals, renormalized at the image border), known pixels stay fixed:
`W_i x_i - sum_j w_ij x_j = sum_k w_ik v_k` over missing j and known k. That sparse system is
symmetric positive definite and solved directly (scipy's SuperLU), one image at a time, all
channels at once; the system is built with whole-array numpy operations (the authors' code, which
pytorch-grad-cam copies, fills a scipy lil_matrix element by element). Conjugate gradients in
torch were tried first: the large holes of ROAD's high fractions need hundreds of iterations,
10x slower than the direct solve at 224 x 224 on this CPU. Then `noise` x N(0, 1) is added to the imputed pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["NEIGHBOR_WEIGHTS", "impute"]

NEIGHBOR_WEIGHTS = torch.tensor(
    [[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]], dtype=torch.float64
)
_OFFSETS = [
    ((dy, dx), float(NEIGHBOR_WEIGHTS[dy + 1, dx + 1]))
    for dy in (-1, 0, 1)
    for dx in (-1, 0, 1)
    if dy or dx
]


def _system(missing: np.ndarray) -> tuple:
    """The sparse system of one image's missing pixels (bool [H, W]): (A as CSC, for each
    missing pixel its flat index, and for the right-hand side the (row, known pixel, weight)
    triples), built with whole-array numpy operations."""
    from scipy.sparse import coo_matrix

    h, w = missing.shape
    flat = missing.ravel()
    idx = np.flatnonzero(flat)
    var = np.full(h * w, -1, dtype=np.int64)
    var[idx] = np.arange(idx.size)
    y, x = np.divmod(idx, w)
    rows, cols, vals = [np.arange(idx.size)], [np.arange(idx.size)], []
    diag = np.zeros(idx.size)
    rhs_rows, rhs_pix, rhs_w = [], [], []
    for (dy, dx), weight in _OFFSETS:
        ny, nx = y + dy, x + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diag[inside] += weight
        n = (ny * w + nx)[inside]
        me = np.flatnonzero(inside)
        unknown = flat[n]
        rows.append(me[unknown])
        cols.append(var[n[unknown]])
        vals.append(np.full(int(unknown.sum()), -weight))
        rhs_rows.append(me[~unknown])
        rhs_pix.append(n[~unknown])
        rhs_w.append(np.full(int((~unknown).sum()), weight))
    a = coo_matrix(
        (np.concatenate([diag, *vals]), (np.concatenate(rows), np.concatenate(cols))),
        shape=(idx.size, idx.size),
    ).tocsc()
    return a, idx, np.concatenate(rhs_rows), np.concatenate(rhs_pix), np.concatenate(rhs_w)


def impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """`images` [B, C, H, W] with the pixels where `removed` [B, H, W] is True replaced by the
    linear imputation from their neighbors, plus `noise` x N(0, 1) drawn from one generator per
    image seeded with `seeds[i]` (default 0: the result does not depend on the batch it ran in).
    One sparse direct solve (SuperLU, float64) per image for all channels; needs scipy."""
    try:
        from scipy.sparse.linalg import spsolve
    except ImportError:
        raise ImportError(
            'ROAD needs scipy for its imputation: pip install scipy (or "gradcam_fast[audit]")'
        ) from None
    seeds = [0] * len(images) if seeds is None else list(seeds)
    out = images.detach().to("cpu", torch.float64).clone()
    for i in range(out.shape[0]):
        missing = removed[i].cpu().numpy().astype(bool)
        if not missing.any():
            continue
        a, idx, r_rows, r_pix, r_w = _system(missing)
        pixels = out[i].reshape(out.shape[1], -1).numpy()  # a view: written in place below
        b = np.zeros((idx.size, pixels.shape[0]))
        np.add.at(b, r_rows, r_w[:, None] * pixels[:, r_pix].T)
        solved = np.asarray(spsolve(a, b)).reshape(idx.size, -1)
        if noise:
            gen = torch.Generator().manual_seed(int(seeds[i]))
            jitter = torch.randn(pixels.shape[0], idx.size, generator=gen, dtype=torch.float64)
            solved = solved + noise * jitter.numpy().T
        pixels[:, idx] = solved.T
    return out.to(images.dtype)
