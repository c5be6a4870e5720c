"""Vector-Jacobian products of VGG's head layers, written in plain forward ops.

Each supported layer type has one `Rule` in `RULES`: its `forward` runs the layer and returns
what the backward needs (a named tuple, or None), and its `vjp` maps the gradient of the layer's
output to the gradient of its input. The two stand side by side, so one screen shows a layer's
forward and backward. Gradients carry a target axis: `g` has shape [B, K, *layer_output_shape]
while saved tensors have [B, ...], so K class maps share one forward. Nothing here touches
autograd, so the whole graph traces and exports to ONNX.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FLATTEN", "RULES", "Flatten", "Rule", "forward_saving", "vjp"]


class Flatten(nn.Module):
    """`torch.flatten(x, 1)` as VGG.forward does it between `avgpool` and `classifier`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


FLATTEN = Flatten()


class Rule(NamedTuple):
    """A layer type's forward (layer, x) -> (y, saved) and VJP (layer, g, saved) -> g_in."""

    forward: Callable[[Any, torch.Tensor], tuple[torch.Tensor, Any]]
    vjp: Callable[[Any, torch.Tensor, Any], torch.Tensor]


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _zero(g: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=g.dtype, device=g.device)


def _over_targets(g: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[B, K, *s] -> ([B*K, *s], K) for ops that want one batch axis."""
    return g.reshape(-1, *g.shape[2:]), g.shape[1]


def _back(g: torch.Tensor, k: int) -> torch.Tensor:
    """[B*K, *s] -> [B, K, *s]."""
    return g.reshape(-1, k, *g.shape[1:])


# --- Conv2d: conv_transpose2d(g, W), with the output padding that restores the input size


class ConvSaved(NamedTuple):
    input_hw: tuple[int, int]


def _conv_forward(layer: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, ConvSaved]:
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise NotImplementedError("only Conv2d with numeric zero padding is supported")
    return layer(x), ConvSaved(tuple(x.shape[-2:]))


def _conv_vjp(layer: nn.Conv2d, g: torch.Tensor, saved: ConvSaved) -> torch.Tensor:
    g4, k = _over_targets(g)
    stride, padding = _pair(layer.stride), _pair(layer.padding)
    dilation, ksize = _pair(layer.dilation), _pair(layer.kernel_size)
    out_hw = g4.shape[-2:]
    output_padding = tuple(
        saved.input_hw[i]
        - ((out_hw[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (ksize[i] - 1) + 1)
        for i in range(2)
    )
    gin = F.conv_transpose2d(
        g4, layer.weight, None, stride, padding, output_padding, layer.groups, dilation
    )
    return _back(gin, k)


# --- ReLU: g * (z > 0)


class ReluSaved(NamedTuple):
    positive: torch.Tensor  # bool [B, ...], where the output is above zero


def _relu_forward(layer: nn.ReLU, x: torch.Tensor) -> tuple[torch.Tensor, ReluSaved]:
    y = F.relu(x)  # never in place: x may be the target activations the graph returns
    return y, ReluSaved(y > 0)


def _relu_vjp(layer: nn.ReLU, g: torch.Tensor, saved: ReluSaved) -> torch.Tensor:
    return torch.where(saved.positive.unsqueeze(1), g, _zero(g))


# --- MaxPool2d: route g to each window's FIRST maximum (PyTorch's rule, ties included)


class TiledWinners(NamedTuple):
    """Windows that tile the input (VGG's pools): a one-hot of each window's winner."""

    first: torch.Tensor  # bool [B, C, h, kh, w, kw]
    input_hw: tuple[int, int]


class PoolIndices(NamedTuple):
    """Overlapping or padded windows: the winners' flat indices from max_pool2d."""

    indices: torch.Tensor  # int64 [B, C, h, w]
    input_hw: tuple[int, int]


def _is_tiling(pool: nn.MaxPool2d) -> bool:
    """True when the windows tile the input: kernel == stride, no padding or dilation (VGG's)."""
    k, st = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    return (
        k == st
        and _pair(pool.padding) == (0, 0)
        and _pair(pool.dilation) == (1, 1)
        and not pool.ceil_mode
    )


def _maxpool_forward(
    layer: nn.MaxPool2d, x: torch.Tensor
) -> tuple[torch.Tensor, TiledWinners | PoolIndices]:
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
    return y, PoolIndices(idx, tuple(x.shape[-2:]))


def _maxpool_vjp(
    layer: nn.MaxPool2d, g: torch.Tensor, saved: TiledWinners | PoolIndices
) -> torch.Tensor:
    if isinstance(saved, TiledWinners):
        return _tiled_max_vjp(g, saved)
    (h, w), g4 = saved.input_hw, g.reshape(-1, *g.shape[2:])
    n, c, k = g4.shape[0], g4.shape[1], g.shape[1]
    idx = saved.indices.unsqueeze(1).expand(-1, k, -1, -1, -1).reshape(n, c, -1)
    gin = torch.zeros(n, c, h * w, dtype=g.dtype, device=g.device)
    gin = gin.scatter_add(2, idx, g4.reshape(n, c, -1))
    return _back(gin.reshape(n, c, h, w), k)


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
    routed = torch.where(first, g.reshape(b, k, c, h, 1, w, 1), _zero(g))  # [B,K,C,h,kh,w,kw]
    gin = routed.reshape(b, k, c, h * first.shape[4], w * first.shape[6])
    if gin.shape[-2:] != (height, width):  # floor mode: uncovered rows/columns get zero
        gin = F.pad(gin, (0, width - gin.shape[-1], 0, height - gin.shape[-2]))
    return gin


# --- AdaptiveAvgPool2d: identity at equal sizes, else the transpose of the pooling matrices


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


def _avgpool_forward(
    layer: nn.AdaptiveAvgPool2d, x: torch.Tensor
) -> tuple[torch.Tensor, PoolMatrices | None]:
    h, w = x.shape[-2:]
    oh, ow = _pair(layer.output_size)
    oh, ow = oh or h, ow or w
    if (h, w) == (oh, ow):
        return x, None
    ph, pw = _pool_matrix(h, oh, x), _pool_matrix(w, ow, x)
    return ph @ x @ pw.T, PoolMatrices(ph, pw)


def _avgpool_vjp(
    layer: nn.AdaptiveAvgPool2d, g: torch.Tensor, saved: PoolMatrices | None
) -> torch.Tensor:
    return g if saved is None else saved.rows.T @ g @ saved.cols


# --- BatchNorm2d (eval: running statistics): g * gamma / sqrt(running_var + eps)


def _batchnorm_forward(layer: nn.BatchNorm2d, x: torch.Tensor) -> tuple[torch.Tensor, None]:
    y = F.batch_norm(
        x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps
    )
    return y, None


def _batchnorm_vjp(layer: nn.BatchNorm2d, g: torch.Tensor, saved: None) -> torch.Tensor:
    scale = torch.rsqrt(layer.running_var + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight
    return g * scale.reshape(-1, 1, 1)


# --- Flatten: a reshape back


class FlattenSaved(NamedTuple):
    input_shape: tuple[int, ...]  # without the batch axis


def _flatten_forward(layer: Flatten, x: torch.Tensor) -> tuple[torch.Tensor, FlattenSaved]:
    return torch.flatten(x, 1), FlattenSaved(tuple(x.shape[1:]))


def _flatten_vjp(layer: Flatten, g: torch.Tensor, saved: FlattenSaved) -> torch.Tensor:
    return g.reshape(g.shape[0], g.shape[1], *saved.input_shape)


# --- Linear: g @ W;  Dropout (eval): identity


def _linear_forward(layer: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, None]:
    return layer(x), None


def _linear_vjp(layer: nn.Linear, g: torch.Tensor, saved: None) -> torch.Tensor:
    return g @ layer.weight


def _identity_forward(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, None]:
    return x, None


def _identity_vjp(layer: nn.Module, g: torch.Tensor, saved: None) -> torch.Tensor:
    return g


RULES: dict[type[nn.Module], Rule] = {
    nn.Conv2d: Rule(_conv_forward, _conv_vjp),
    nn.ReLU: Rule(_relu_forward, _relu_vjp),
    nn.MaxPool2d: Rule(_maxpool_forward, _maxpool_vjp),
    nn.AdaptiveAvgPool2d: Rule(_avgpool_forward, _avgpool_vjp),
    nn.BatchNorm2d: Rule(_batchnorm_forward, _batchnorm_vjp),
    Flatten: Rule(_flatten_forward, _flatten_vjp),
    nn.Linear: Rule(_linear_forward, _linear_vjp),
    nn.Dropout: Rule(_identity_forward, _identity_vjp),
}


def _rule(layer: nn.Module) -> Rule:
    """The rule of `layer`'s type, or of the nearest base class that has one."""
    for cls in type(layer).__mro__:
        if cls in RULES:
            return RULES[cls]
    raise NotImplementedError(f"no VJP for layer type {type(layer).__name__}")


def forward_saving(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Run `layer` on `x` (never in place) and return (output, what `vjp` needs)."""
    return _rule(layer).forward(layer, x)


def vjp(layer: nn.Module, g: torch.Tensor, saved: Any) -> torch.Tensor:
    """Gradient at the input of `layer` from the gradient `g` [B, K, ...] at its output."""
    return _rule(layer).vjp(layer, g, saved)
