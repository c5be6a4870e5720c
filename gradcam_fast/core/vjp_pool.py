"""VJP rules of the pooling layers: max (PyTorch's first-maximum rule, ties included), average
and adaptive average, each forward beside its VJP (see vjp.py for the conventions)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .vjp_base import Grads, Rule, back, output_padding, over_targets, pair, zero

__all__ = ["ADAPTIVE_AVGPOOL", "AVGPOOL", "MAXPOOL"]


# --- MaxPool2d: route g to each window's FIRST maximum (PyTorch's rule, ties included)


class TiledWinners(NamedTuple):
    """Windows that tile the input (VGG's pools): a one-hot of each window's winner."""

    first: torch.Tensor  # bool [B, C, h, kh, w, kw]
    input_hw: tuple[int, int]


class PoolIndices(NamedTuple):
    """Overlapping or padded windows: the winners' flat indices from max_pool2d."""

    indices: torch.Tensor  # int64 [B, C, h, w]
    input_hw: tuple[int, int]


def _max_pool_module(op: Any, args: tuple, kwargs: dict) -> nn.MaxPool2d:
    """The MaxPool2d a module or an F.max_pool2d call stands for."""
    if isinstance(op, nn.MaxPool2d):
        return op
    kwargs = {k: v for k, v in kwargs.items() if k != "return_indices"}
    return nn.MaxPool2d(*args, **kwargs)


def _is_tiling(pool: nn.MaxPool2d) -> bool:
    """True when the windows tile the input: kernel == stride, no padding or dilation (VGG's)."""
    k, st = pair(pool.kernel_size), pair(pool.stride or pool.kernel_size)
    return (
        k == st
        and pair(pool.padding) == (0, 0)
        and pair(pool.dilation) == (1, 1)
        and not pool.ceil_mode
    )


def _maxpool_forward(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    pool = _max_pool_module(op, args, kwargs)
    if _is_tiling(pool):
        return _tiled_max(x, pair(pool.kernel_size))
    y, idx = F.max_pool2d(
        x,
        pool.kernel_size,
        pool.stride,
        pool.padding,
        pool.dilation,
        ceil_mode=pool.ceil_mode,
        return_indices=True,
    )
    return y, PoolIndices(idx, tuple(x.shape[-2:]))


def _maxpool_vjp(op: Any, g: torch.Tensor, saved: TiledWinners | PoolIndices, needs) -> Grads:
    if isinstance(saved, TiledWinners):
        return (_tiled_max_vjp(g, saved),)
    (h, w), g4 = saved.input_hw, g.reshape(-1, *g.shape[2:])
    n, c, k = g4.shape[0], g4.shape[1], g.shape[1]
    idx = saved.indices.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(n, c, -1)
    gin = torch.zeros(n, c, h * w, dtype=g.dtype, device=g.device)
    gin = gin.scatter_add(2, idx, g4.reshape(n, c, -1))
    return (back(gin.reshape(n, c, h, w), k),)


def _tiled_max(x: torch.Tensor, kernel: tuple[int, int]) -> tuple[torch.Tensor, TiledWinners]:
    """Max-pool over non-overlapping windows, keeping a one-hot of each window's winner.

    The winner is the FIRST maximum in row-major window order, PyTorch's rule, decided here in
    plain ops (max, equality, a min over positions) rather than by a runtime's MaxPool indices, whose
    tie order differs between ONNX Runtime's CPU and CUDA kernels. Ties are common: after a
    ReLU many windows are all zero. Floor mode drops the last rows/columns, as MaxPool2d does.
    The windows are reduced in place as a [B, C, h, kh, w, kw] view, with no transpose: ONNX
    Runtime's 6-D Transpose is slow on uint8 (6 ms a call on VGG19's last pool in the int8
    model, where the dequantization moves below it).
    """
    kh, kw = kernel
    n, c, height, width = x.shape
    h, w = height // kh, width // kw
    windows = x[..., : h * kh, : w * kw].reshape(n, c, h, kh, w, kw)
    y = windows.amax(dim=(3, 5), keepdim=True)
    is_max = windows == y
    # Index of the first maximum as a min-reduction over the positions that hold the maximum:
    # exact in every runtime, and far cheaper on GPUs than a scan over the window.
    position = torch.arange(kh * kw, device=x.device).reshape(kh, 1, kw)
    first_index = torch.where(is_max, position, kh * kw).amin(dim=(3, 5), keepdim=True)
    return y.reshape(n, c, h, w), TiledWinners(position == first_index, (height, width))


def _tiled_max_vjp(g: torch.Tensor, saved: TiledWinners) -> torch.Tensor:
    height, width = saved.input_hw
    b, k, c, h, w = g.shape
    first = saved.first.unsqueeze(1)  # [B,1,C,h,kh,w,kw]
    routed = torch.where(first, g.reshape(b, k, c, h, 1, w, 1), zero(g))  # [B,K,C,h,kh,w,kw]
    gin = routed.reshape(b, k, c, h * first.shape[4], w * first.shape[6])
    if gin.shape[-2:] != (height, width):  # floor mode: uncovered rows/columns get zero
        gin = F.pad(gin, (0, width - gin.shape[-1], 0, height - gin.shape[-2]))
    return gin


MAXPOOL = Rule(_maxpool_forward, _maxpool_vjp)


# --- AvgPool2d: the transpose of the average, a depthwise conv_transpose2d of 1/(kh*kw)


def _avg_pool_module(op: Any, args: tuple, kwargs: dict) -> nn.AvgPool2d:
    return op if isinstance(op, nn.AvgPool2d) else nn.AvgPool2d(*args, **kwargs)


def _avgpool_forward(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    pool = _avg_pool_module(op, args, kwargs)
    y = pool(x)
    padded = pair(pool.padding) != (0, 0)
    floor_size = [
        (x.shape[-2 + i] + 2 * pair(pool.padding)[i] - pair(pool.kernel_size)[i])
        // pair(pool.stride or pool.kernel_size)[i]
        + 1
        for i in range(2)
    ]
    if (
        pool.divisor_override is not None
        or (padded and not pool.count_include_pad)
        or list(y.shape[-2:]) != floor_size
    ):
        raise NotImplementedError(
            "AvgPool2d with divisor_override, count_include_pad=False with padding, or "
            "ceil_mode windows has no VJP rule"
        )
    return y, (pool, tuple(x.shape[-2:]))


def _avgpool_vjp(op: Any, g: torch.Tensor, saved: tuple, needs: tuple) -> Grads:
    pool, input_hw = saved
    g4, k = over_targets(g)
    ksize, padding = pair(pool.kernel_size), pair(pool.padding)
    stride = pair(pool.stride or pool.kernel_size)
    channels = g4.shape[1]
    weight = torch.full(
        (channels, 1, *ksize), 1.0 / (ksize[0] * ksize[1]), dtype=g.dtype, device=g.device
    )
    pad = output_padding(input_hw, g4.shape[-2:], stride, padding, (1, 1), ksize)
    gin = F.conv_transpose2d(g4, weight, None, stride, padding, pad, channels)
    return (back(gin, k),)


AVGPOOL = Rule(_avgpool_forward, _avgpool_vjp)


# --- AdaptiveAvgPool2d: a mean (global), identity (equal sizes), else pooling matrices


class PoolMatrices(NamedTuple):
    rows: torch.Tensor  # [out_h, in_h]
    cols: torch.Tensor  # [out_w, in_w]


def _pool_matrix(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """[out, in] matrix of AdaptiveAvgPool's bins (floor start, ceil end, overlapping)."""
    m = torch.zeros(out_size, in_size, dtype=like.dtype, device=like.device)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _adaptive_avgpool_forward(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    size = op.output_size if isinstance(op, nn.AdaptiveAvgPool2d) else (args or [None])[0]
    size = kwargs.get("output_size", size)
    h, w = x.shape[-2:]
    oh, ow = pair(size)
    oh, ow = oh or h, ow or w
    if (h, w) == (oh, ow):
        return x, None
    if (oh, ow) == (1, 1):
        return x.mean((-2, -1), keepdim=True), (h, w)
    ph, pw = _pool_matrix(h, oh, x), _pool_matrix(w, ow, x)
    return ph @ x @ pw.T, PoolMatrices(ph, pw)


def _adaptive_avgpool_vjp(op: Any, g: torch.Tensor, saved: Any, needs: tuple) -> Grads:
    if saved is None:
        return (g,)
    if isinstance(saved, PoolMatrices):
        return (saved.rows.T @ g @ saved.cols,)
    h, w = saved
    return (g.expand(*g.shape[:-2], h, w) / (h * w),)


ADAPTIVE_AVGPOOL = Rule(_adaptive_avgpool_forward, _adaptive_avgpool_vjp)
