"""Noisy linear imputation, the "debias" of ROAD (Rong et al., "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022).

Each removed pixel takes the weighted mean of its 8 neighbors (weight 1/6 for the 4 direct ones,
1/12 for the diagonals, renormalized at the image border), known pixels stay fixed:
`W_i x_i - sum_j w_ij x_j = sum_k w_ik v_k` over missing j and known k. That sparse system is
symmetric positive definite and solved directly (scipy's SuperLU), all channels at once, the
images of a batch on parallel threads (SuperLU releases the GIL). The system is built with
whole-array numpy operations (the authors' code, which pytorch-grad-cam copies, fills a scipy
lil_matrix element by element), its unknowns numbered by nested dissection: with SuperLU's own
orderings (COLAMD, MMD) the factorization took 1.6-2.5x longer on ROAD's masks at 224 x 224.
Conjugate gradients in torch were tried first: the large holes of ROAD's high fractions need
hundreds of iterations, 10x slower than the direct solve at 224 x 224 on this CPU; algebraic
multigrid (pyamg) was no faster than the direct solve. Measured on an AVX2-only EPYC
(2026-12-08, one image's 18 ROAD masks, one thread, 1.4-1.6 s in all): SuperLU's time follows
the nonzeros of L + U (about 75 ns each), not the flops, and nothing tried gained 1.3x: solving
each 8-connected hole on its own (1.0x: one hole dominates), float32 factors (1e-4 off; with
float64 refinement 1.1x), SuperLU's relax and panel sizes and other dissection leaves (within
noise), qdldl (1.0-1.2x), CHOLMOD through cholespy (slower) or cvxopt (1.5x, but GPL-3), and
one factorization shared by an order's nested masks (9x the fill). A batched dense multifrontal
solver in torch over one nested dissection of the whole grid (every mask's system given the same
pattern by identity rows for the known pixels; a prototype, not kept) was exact but 2.2x (one
thread) to 2.9x (two threads) slower on a batch of 16 of ROAD's masks: it factors the known
pixels too, and its small fronts spend more time moving update matrices than in the dense
kernels. Then `noise` x N(0, 1) is added to the imputed pixels.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

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


_DISSECTION_LEAF = 32  # pixels; 8 to 512 tried on ROAD's masks at 224 x 224: 8-32 fastest


@functools.lru_cache(maxsize=8)
def _dissection_rank(h: int, w: int) -> np.ndarray:
    """Each pixel's place [H * W] in a nested dissection of the h x w grid: the box is cut
    across its longer side by one row or column (with 8 neighbors, one line separates the two
    halves), the halves are numbered first and the line last, down to `_DISSECTION_LEAF`
    pixels. A line of the whole grid still separates any subset of its pixels, so the missing
    pixels of every mask are ordered by this one ranking, and their LU factors stay small."""
    order: list[np.ndarray] = []

    def dissect(y0: int, y1: int, x0: int, x1: int) -> None:
        if (y1 - y0) * (x1 - x0) <= _DISSECTION_LEAF:
            ys, xs = np.mgrid[y0:y1, x0:x1]
            order.append((ys * w + xs).ravel())
        elif y1 - y0 >= x1 - x0:
            cut = (y0 + y1) // 2
            dissect(y0, cut, x0, x1)
            dissect(cut + 1, y1, x0, x1)
            order.append(cut * w + np.arange(x0, x1))
        else:
            cut = (x0 + x1) // 2
            dissect(y0, y1, x0, cut)
            dissect(y0, y1, cut + 1, x1)
            order.append(np.arange(y0, y1) * w + cut)

    dissect(0, h, 0, w)
    rank = np.empty(h * w, dtype=np.int64)
    rank[np.concatenate(order)] = np.arange(h * w)
    return rank


def _system(missing: np.ndarray) -> tuple:
    """The sparse system of one image's missing pixels (bool [H, W]): (A as CSC, for each
    unknown in dissection order its flat pixel index, and for the right-hand side the (row,
    known pixel, weight) triples), built with whole-array numpy operations."""
    from scipy.sparse import coo_matrix

    h, w = missing.shape
    flat = missing.ravel()
    idx = np.flatnonzero(flat)
    idx = idx[np.argsort(_dissection_rank(h, w)[idx])]
    y, x = np.divmod(idx, w)
    var = np.full(h * w, -1, dtype=np.int64)
    var[idx] = np.arange(idx.size)
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


def _fill(pixels: np.ndarray, missing: np.ndarray, noise: float, seed: int) -> None:
    """Impute one image in place: `pixels` [C, H*W] float64, `missing` bool [H, W]."""
    from scipy.sparse.linalg import splu

    if missing.all():  # nothing known to extend from: the normalized data's mean, 0
        pixels[:] = 0.0
    else:
        a, idx, r_rows, r_pix, r_w = _system(missing)
        b = np.zeros((idx.size, pixels.shape[0]))
        np.add.at(b, r_rows, r_w[:, None] * pixels[:, r_pix].T)
        # A is symmetric positive definite: no pivoting, and the dissection order kept as given
        lu = splu(a, permc_spec="NATURAL", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        pixels[:, idx] = lu.solve(b).T
    if noise:
        gen = torch.Generator().manual_seed(int(seed))
        raster = np.flatnonzero(missing)
        jitter = torch.randn(pixels.shape[0], raster.size, generator=gen, dtype=torch.float64)
        pixels[:, raster] += noise * jitter.numpy()


def impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    noise: float = 0.01,
    seeds: Sequence[int] | None = None,
) -> torch.Tensor:
    """`images` [B, C, H, W] with the pixels where `removed` [B, H, W] is True replaced by the
    linear imputation from their neighbors, plus `noise` x N(0, 1) drawn from one generator per
    image seeded with `seeds[i]` (default 0: the result does not depend on the batch it ran in).
    Where every pixel is removed there is nothing to extend from: they become 0 plus the noise.
    One sparse direct solve (SuperLU, float64) per image for all channels, the images on
    parallel threads; needs scipy."""
    try:
        import scipy.sparse.linalg  # noqa: F401
    except ImportError:
        raise ImportError(
            'ROAD needs scipy for its imputation: pip install scipy (or "gradcam_fast[audit]")'
        ) from None
    seeds = [0] * len(images) if seeds is None else list(seeds)
    out = images.detach().to("cpu", torch.float64).clone()
    pixels = out.flatten(2).numpy()  # a view: _fill writes into `out`
    missing = removed.cpu().numpy().astype(bool)
    todo = [i for i in range(len(out)) if missing[i].any()]
    # as many threads as torch may use: a Ray actor or a pinned process keeps to its CPUs
    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), torch.get_num_threads()))) as pool:
        for done in [pool.submit(_fill, pixels[i], missing[i], noise, seeds[i]) for i in todo]:
            done.result()
    return out.to(images.dtype)
