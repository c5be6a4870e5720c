"""Vector-Jacobian products of VGG's head layers, written in plain forward ops.

`forward_saving` runs one layer and returns what its backward needs; `vjp` maps the gradient of
the layer's output to the gradient of its input. Gradients carry a target axis: `g` has shape
[B, K, *layer_output_shape] while saved tensors have [B, ...], so K class maps share one forward.
Nothing here touches autograd, so the whole graph traces and exports to ONNX.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FLATTEN", "Flatten", "forward_saving", "vjp"]


class Flatten(nn.Module):
    """`torch.flatten(x, 1)` as VGG.forward does it between `avgpool` and `classifier`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


FLATTEN = Flatten()


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _pool_matrix(in_size: int, out_size: int, like: torch.Tensor) -> torch.Tensor:
    """[out, in] matrix of AdaptiveAvgPool's bins (floor start, ceil end, overlapping)."""
    m = torch.zeros(out_size, in_size, dtype=like.dtype, device=like.device)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _over_targets(g: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, K, *s] -> ([B*K, *s], (B, K)) for ops that want one batch axis."""
    b, k = g.shape[0], g.shape[1]
    return g.reshape(-1, *g.shape[2:]), (b, k)


def _back(g: torch.Tensor, k: int) -> torch.Tensor:
    return g.reshape(-1, k, *g.shape[1:])


def forward_saving(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Run `layer` on `x` (never in place) and return (output, what `vjp` needs)."""
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise NotImplementedError("only Conv2d with numeric zero padding is supported")
        return layer(x), tuple(x.shape[-2:])
    if isinstance(layer, nn.ReLU):
        y = F.relu(x)  # not in place: x may be the target activations we return
        return y, y > 0
    if isinstance(layer, nn.MaxPool2d):
        if _is_tiling(layer):
            return _tiled_max(x, _pair(layer.kernel_size))
        y, idx = F.max_pool2d(
            x,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            ceil_mode=layer.ceil_mode,
            return_indices=True,
        )
        return y, ("indices", idx, tuple(x.shape[-2:]))
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        h, w = x.shape[-2:]
        oh, ow = _pair(layer.output_size)
        oh, ow = oh or h, ow or w
        if (h, w) == (oh, ow):
            return x, None
        ph, pw = _pool_matrix(h, oh, x), _pool_matrix(w, ow, x)
        return ph @ x @ pw.T, (ph, pw)
    if isinstance(layer, nn.BatchNorm2d):  # eval semantics: running statistics
        return F.batch_norm(
            x,
            layer.running_mean,
            layer.running_var,
            layer.weight,
            layer.bias,
            False,
            0.0,
            layer.eps,
        ), None
    if isinstance(layer, Flatten):
        return torch.flatten(x, 1), tuple(x.shape[1:])
    if isinstance(layer, nn.Linear):
        return layer(x), None
    if isinstance(layer, nn.Dropout):
        return x, None
    raise NotImplementedError(f"no VJP for layer type {type(layer).__name__}")


def vjp(layer: nn.Module, g: torch.Tensor, saved: Any) -> torch.Tensor:
    """Gradient at the input of `layer` from the gradient `g` [B, K, ...] at its output."""
    if isinstance(layer, nn.Conv2d):
        g4, (_, k) = _over_targets(g)
        stride, padding = _pair(layer.stride), _pair(layer.padding)
        dilation, ksize = _pair(layer.dilation), _pair(layer.kernel_size)
        out_hw = g4.shape[-2:]
        output_padding = tuple(
            saved[i]
            - ((out_hw[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (ksize[i] - 1) + 1)
            for i in range(2)
        )
        gin = F.conv_transpose2d(
            g4, layer.weight, None, stride, padding, output_padding, layer.groups, dilation
        )
        return _back(gin, k)
    if isinstance(layer, nn.ReLU):
        return torch.where(saved.unsqueeze(1), g, torch.zeros((), dtype=g.dtype, device=g.device))
    if isinstance(layer, nn.MaxPool2d):
        if saved[0] == "tiles":
            return _tiled_max_vjp(g, saved)
        # Overlapping or padded windows: scatter to the winners' indices from max_pool2d.
        _, idx, (h, w) = saved
        g4, (_b, k) = _over_targets(g)
        n, c = g4.shape[0], g4.shape[1]
        idx = idx.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(n, c, -1)
        gin = torch.zeros(n, c, h * w, dtype=g.dtype, device=g.device)
        gin = gin.scatter_add(2, idx, g4.reshape(n, c, -1))
        return _back(gin.reshape(n, c, h, w), k)
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        if saved is None:
            return g
        ph, pw = saved
        return ph.T @ g @ pw
    if isinstance(layer, nn.BatchNorm2d):
        scale = torch.rsqrt(layer.running_var + layer.eps)
        if layer.weight is not None:
            scale = scale * layer.weight
        return g * scale.reshape(-1, 1, 1)
    if isinstance(layer, Flatten):
        return g.reshape(g.shape[0], g.shape[1], *saved)
    if isinstance(layer, nn.Linear):
        return g @ layer.weight
    if isinstance(layer, nn.Dropout):
        return g
    raise NotImplementedError(f"no VJP for layer type {type(layer).__name__}")


def _is_tiling(pool: nn.MaxPool2d) -> bool:
    """True when the windows tile the input: kernel == stride, no padding or dilation (VGG's)."""
    k, st = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    return (
        k == st
        and _pair(pool.padding) == (0, 0)
        and _pair(pool.dilation) == (1, 1)
        and not pool.ceil_mode
    )


def _tiled_max(x: torch.Tensor, kernel: tuple[int, int]) -> tuple[torch.Tensor, Any]:
    """Max-pool over non-overlapping windows, keeping a one-hot of each window's winner.

    The winner is the FIRST maximum in row-major window order, PyTorch's rule, decided here in
    plain ops (max, equality, a min over positions) rather than by a runtime's MaxPool indices, whose
    tie order differs between ONNX Runtime's CPU and CUDA kernels. Ties are common: after a
    ReLU many windows are all zero. Floor mode drops the last rows/columns, as MaxPool2d does.
    """
    kh, kw = kernel
    n, c, height, width = x.shape
    h, w = height // kh, width // kw
    windows = (
        x[..., : h * kh, : w * kw]
        .reshape(n, c, h, kh, w, kw)
        .permute(0, 1, 2, 4, 3, 5)
        .reshape(n, c, h, w, kh * kw)
    )
    y = windows.amax(dim=-1)
    is_max = windows == y.unsqueeze(-1)
    # Index of the first maximum as a min-reduction over the positions that hold the maximum:
    # exact in every runtime, and far cheaper on GPUs than a scan over a 4-wide axis.
    position = torch.arange(kh * kw, device=x.device)
    first_index = torch.where(is_max, position, kh * kw).amin(dim=-1, keepdim=True)
    first = position == first_index
    return y, ("tiles", first, (height, width), kernel)


def _tiled_max_vjp(g: torch.Tensor, saved: Any) -> torch.Tensor:
    _, first, (height, width), (kh, kw) = saved
    b, k, c, h, w = g.shape
    routed = torch.where(
        first.unsqueeze(1), g.unsqueeze(-1), torch.zeros((), dtype=g.dtype, device=g.device)
    )  # [B, K, C, h, w, kh*kw]
    gin = routed.reshape(b, k, c, h, w, kh, kw).permute(0, 1, 2, 3, 5, 4, 6)
    gin = gin.reshape(b, k, c, h * kh, w * kw)
    if (h * kh, w * kw) != (height, width):  # floor mode: uncovered rows/columns get zero
        gin = F.pad(gin, (0, width - w * kw, 0, height - h * kh))
    return gin
