"""Vector-Jacobian products of the ops a CNN's head is made of, written in plain forward ops.

`RULES` maps each supported op to its `Rule`: a module type (nn.Conv2d, ...), a function
(operator.add, torch.cat, F.relu, ...) or a tensor method by name ("view", "mean", ...). A
rule's `forward(op, *args, **kwargs)` runs the op (never in place) and returns (output, saved):
what its backward needs. Its `vjp(op, g, saved, needs)` maps the gradient `g` of the output to
a tuple with one gradient per positional argument (a list of them for a list argument, None
where `needs` says none is wanted or the argument is no tensor). The two stand side by side, so
one screen shows an op's forward and backward.

Gradients carry a target axis: `g` is [B, K, *output_shape[1:]] while saved tensors are
[B, ...], so K class maps share one forward. Every tensor that depends on the target has the
batch as its first axis. Nothing here touches autograd, so the whole graph exports to ONNX.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RULES", "Rule", "rule_for", "supported_ops"]

Grads = tuple[Any, ...]


class Rule(NamedTuple):
    """An op's forward (op, *args, **kwargs) -> (y, saved) and VJP (op, g, saved, needs) ->
    one gradient per positional argument."""

    forward: Callable[..., tuple[Any, Any]]
    vjp: Callable[[Any, Any, Any, tuple], Grads]


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


def _with_k(t: Any, rank: int) -> Any:
    """A saved operand broadcast against [B, K, ...]: a batched tensor of the output's rank gets
    the K axis; a lower-rank one (a parameter) broadcasts from the right as it is."""
    return t.unsqueeze(1) if isinstance(t, torch.Tensor) and t.dim() == rank else t


def _g_dim(dim: int, rank: int) -> int:
    """An axis of a [B, ...] tensor of `rank` axes, in its gradient [B, K, ...]."""
    dim = dim % rank
    if dim == 0:
        raise NotImplementedError("ops over the batch axis have no VJP rule")
    return dim + 1


def _unbroadcast(g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Sum g [B, K, *out[1:]] over the axes an operand of `shape` [B, ...] was broadcast on."""
    if len(shape) != g.dim() - 1:
        raise NotImplementedError(f"broadcast of a [B, ...] operand of shape {list(shape)}")
    axes = [i + 1 for i in range(1, len(shape)) if shape[i] == 1 and g.shape[i + 1] != 1]
    return g.sum(axes, keepdim=True) if axes else g


# --- element-wise activations: g * f'(x), never in place


def _pointwise(f: Callable, grad: Callable, save_output: bool = False) -> Rule:
    """A rule for y = f(op, x): `grad(op, saved, g)` with saved = x (or y)."""

    def forward(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        y = f(op, x, *args, **kwargs)
        return y, (y if save_output else x)

    def vjp(op: Any, g: torch.Tensor, saved: torch.Tensor, needs: tuple) -> Grads:
        return (grad(op, saved.unsqueeze(1), g),)

    return Rule(forward, vjp)


def _relu(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return F.relu(x)  # never in place: x may be the target activations the graph returns


RELU = _pointwise(_relu, lambda op, y, g: torch.where(y > 0, g, _zero(g)), save_output=True)


def _hardtanh_bounds(op: Any) -> tuple[float, float]:
    return (op.min_val, op.max_val) if isinstance(op, nn.Hardtanh) else (0.0, 6.0)


HARDTANH = _pointwise(  # ReLU6 too: PyTorch passes g strictly inside (min, max)
    lambda op, x, *a, **k: F.hardtanh(x, *_hardtanh_bounds(op)),
    lambda op, x, g: torch.where(
        (x > _hardtanh_bounds(op)[0]) & (x < _hardtanh_bounds(op)[1]), g, _zero(g)
    ),
)


def _silu_grad(op: Any, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return g * (s * (1 + x * (1 - s)))


SILU = _pointwise(lambda op, x, *a, **k: F.silu(x), _silu_grad)
SIGMOID = _pointwise(
    lambda op, x, *a, **k: torch.sigmoid(x), lambda op, y, g: g * ((1 - y) * y), save_output=True
)


def _hardswish_grad(op: Any, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    # PyTorch's hardswish_backward (since 2.7): 0 up to -3, x/3 + 1/2 inside, 1 from 3 on
    inner = torch.where(x < 3, g * (x / 3 + 0.5), g)
    return torch.where(x <= -3, _zero(g), inner)


HARDSWISH = _pointwise(lambda op, x, *a, **k: F.hardswish(x), _hardswish_grad)
HARDSIGMOID = _pointwise(
    lambda op, x, *a, **k: F.hardsigmoid(x),
    lambda op, x, g: torch.where((x > -3) & (x < 3), g / 6, _zero(g)),
)


def _gelu_approximation(op: Any, kwargs: dict) -> str:
    return op.approximate if isinstance(op, nn.GELU) else kwargs.get("approximate", "none")


def _gelu_forward(op: Any, x: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    approximate = _gelu_approximation(op, kwargs)
    return F.gelu(x, approximate=approximate), (x, approximate)


def _gelu_vjp(op: Any, g: torch.Tensor, saved: tuple, needs: tuple) -> Grads:
    x, approximate = saved[0].unsqueeze(1), saved[1]
    if approximate == "tanh":  # PyTorch's GeluBackward, tanh form
        beta, kappa = math.sqrt(2.0) * (2.0 / math.sqrt(math.pi)) * 0.5, 0.044715
        t = torch.tanh(beta * (x + kappa * x * x * x))
        right = 0.5 * x * (1 - t * t) * beta * (1 + 3 * kappa * x * x)
        return (g * (0.5 * (1 + t) + right),)
    cdf = 0.5 * (1 + torch.erf(x * math.sqrt(0.5)))
    pdf = (2.0 / math.sqrt(math.pi)) * math.sqrt(0.5) * 0.5 * torch.exp(-0.5 * x * x)
    return (g * (cdf + x * pdf),)


GELU = Rule(_gelu_forward, _gelu_vjp)


# --- identities in eval: Dropout, StochasticDepth, contiguous


def _identity_forward(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[Any, None]:
    return x, None


def _identity_vjp(op: Any, g: torch.Tensor, saved: None, needs: tuple) -> Grads:
    return (g,)


IDENTITY = Rule(_identity_forward, _identity_vjp)
CONTIGUOUS = Rule(lambda op, x, *a, **k: (x.contiguous(*a, **k), None), _identity_vjp)


def _stochastic_depth_forward(
    op: Any, x: torch.Tensor, p: float, mode: str, training: bool = True
) -> tuple[torch.Tensor, None]:
    if training and p > 0:
        raise NotImplementedError("stochastic_depth in training mode: put the model in eval()")
    return x, None


STOCHASTIC_DEPTH = Rule(_stochastic_depth_forward, _identity_vjp)


# --- Conv2d: conv_transpose2d(g, W), with the output padding that restores the input size


def _output_padding(in_hw, out_hw, stride, padding, dilation, ksize) -> tuple[int, int]:
    return tuple(
        in_hw[i] - ((out_hw[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (ksize[i] - 1) + 1)
        for i in range(2)
    )


def _conv_forward(layer: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise NotImplementedError("only Conv2d with numeric zero padding has a VJP rule")
    return layer(x), tuple(x.shape[-2:])


def _conv_vjp(layer: nn.Conv2d, g: torch.Tensor, input_hw: tuple[int, int], needs: tuple) -> Grads:
    g4, k = _over_targets(g)
    stride, padding = _pair(layer.stride), _pair(layer.padding)
    dilation, ksize = _pair(layer.dilation), _pair(layer.kernel_size)
    pad = _output_padding(input_hw, g4.shape[-2:], stride, padding, dilation, ksize)
    gin = F.conv_transpose2d(g4, layer.weight, None, stride, padding, pad, layer.groups, dilation)
    return (_back(gin, k),)


CONV = Rule(_conv_forward, _conv_vjp)


# --- BatchNorm2d (eval: running statistics): g * gamma / sqrt(running_var + eps)


def _batchnorm_forward(layer: nn.BatchNorm2d, x: torch.Tensor) -> tuple[torch.Tensor, None]:
    y = F.batch_norm(
        x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps
    )
    return y, None


def _batchnorm_vjp(layer: nn.BatchNorm2d, g: torch.Tensor, saved: None, needs: tuple) -> Grads:
    scale = torch.rsqrt(layer.running_var + layer.eps)
    if layer.weight is not None:
        scale = scale * layer.weight
    return (g * scale.reshape(-1, 1, 1),)


BATCHNORM = Rule(_batchnorm_forward, _batchnorm_vjp)


# --- LayerNorm over the last axes (ConvNeXt's, channels-last after a permute)


class NormSaved(NamedTuple):
    normalized: torch.Tensor  # (x - mean) * rstd, [B, ...]
    rstd: torch.Tensor  # [B, ..., 1, ...] over the normalized axes
    weight: torch.Tensor | None
    axes: tuple[int, ...]  # negative: the last len(normalized_shape) axes


def _layer_norm_forward(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    if isinstance(op, nn.LayerNorm):
        shape, weight, bias, eps = op.normalized_shape, op.weight, op.bias, op.eps
    else:  # F.layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5)
        names = ("normalized_shape", "weight", "bias", "eps")
        bound = {**dict(zip(names, args, strict=False)), **kwargs}
        shape, weight = bound["normalized_shape"], bound.get("weight")
        bias, eps = bound.get("bias"), bound.get("eps", 1e-5)
    axes = tuple(range(-len(shape), 0))
    y = F.layer_norm(x, shape, weight, bias, eps)
    mean = x.mean(axes, keepdim=True)
    rstd = torch.rsqrt(x.var(axes, unbiased=False, keepdim=True) + eps)
    return y, NormSaved((x - mean) * rstd, rstd, weight, axes)


def _layer_norm_vjp(op: Any, g: torch.Tensor, saved: NormSaved, needs: tuple) -> Grads:
    xhat, rstd = saved.normalized.unsqueeze(1), saved.rstd.unsqueeze(1)
    gx = g if saved.weight is None else g * saved.weight
    mean_g = gx.mean(saved.axes, keepdim=True)
    mean_gx = (gx * xhat).mean(saved.axes, keepdim=True)
    return (rstd * (gx - mean_g - xhat * mean_gx),)


LAYER_NORM = Rule(_layer_norm_forward, _layer_norm_vjp)


# --- Linear: g @ W (any leading axes: ConvNeXt's run channels-last)


def _linear_forward(layer: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, None]:
    return layer(x), None


def _linear_vjp(layer: nn.Linear, g: torch.Tensor, saved: None, needs: tuple) -> Grads:
    return (g @ layer.weight,)


LINEAR = Rule(_linear_forward, _linear_vjp)


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
    k, st = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    return (
        k == st
        and _pair(pool.padding) == (0, 0)
        and _pair(pool.dilation) == (1, 1)
        and not pool.ceil_mode
    )


def _maxpool_forward(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    pool = _max_pool_module(op, args, kwargs)
    if _is_tiling(pool):
        return _tiled_max(x, _pair(pool.kernel_size))
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
    return (_back(gin.reshape(n, c, h, w), k),)


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


MAXPOOL = Rule(_maxpool_forward, _maxpool_vjp)


# --- AvgPool2d: the transpose of the average, a depthwise conv_transpose2d of 1/(kh*kw)


def _avg_pool_module(op: Any, args: tuple, kwargs: dict) -> nn.AvgPool2d:
    return op if isinstance(op, nn.AvgPool2d) else nn.AvgPool2d(*args, **kwargs)


def _avgpool_forward(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    pool = _avg_pool_module(op, args, kwargs)
    y = pool(x)
    padded = _pair(pool.padding) != (0, 0)
    floor_size = [
        (x.shape[-2 + i] + 2 * _pair(pool.padding)[i] - _pair(pool.kernel_size)[i])
        // _pair(pool.stride or pool.kernel_size)[i]
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
    g4, k = _over_targets(g)
    ksize, padding = _pair(pool.kernel_size), _pair(pool.padding)
    stride = _pair(pool.stride or pool.kernel_size)
    channels = g4.shape[1]
    weight = torch.full(
        (channels, 1, *ksize), 1.0 / (ksize[0] * ksize[1]), dtype=g.dtype, device=g.device
    )
    pad = _output_padding(input_hw, g4.shape[-2:], stride, padding, (1, 1), ksize)
    gin = F.conv_transpose2d(g4, weight, None, stride, padding, pad, channels)
    return (_back(gin, k),)


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
    oh, ow = _pair(size)
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


# --- mean over axes: g spread evenly


def _mean_forward(op: Any, x: torch.Tensor, dim: Any = None, keepdim: bool = False, **kw) -> tuple:
    if dim is None or kw:
        raise NotImplementedError("mean over every axis or with a dtype has no VJP rule")
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return x.mean(dims, keepdim=keepdim), (
        tuple(x.shape),
        tuple(d % x.dim() for d in dims),
        keepdim,
    )


def _mean_vjp(op: Any, g: torch.Tensor, saved: tuple, needs: tuple) -> Grads:
    shape, dims, keepdim = saved
    axes = [_g_dim(d, len(shape)) for d in dims]
    if not keepdim:
        for axis in sorted(axes):
            g = g.unsqueeze(axis)
    count = math.prod(shape[d] for d in dims)
    return (g.expand(g.shape[0], g.shape[1], *shape[1:]) / count,)


MEAN = Rule(_mean_forward, _mean_vjp)


# --- shapes: flatten, view/reshape, permute, transpose (the batch axis stays first)


def _reshape_vjp(op: Any, g: torch.Tensor, input_shape: tuple, needs: tuple) -> Grads:
    return (g.reshape(g.shape[0], g.shape[1], *input_shape[1:]),)


def _flatten_forward(op: Any, x: torch.Tensor, start_dim: int = 0, end_dim: int = -1) -> tuple:
    if isinstance(op, nn.Flatten):
        start_dim, end_dim = op.start_dim, op.end_dim
    if start_dim % x.dim() == 0:
        raise NotImplementedError("flatten over the batch axis has no VJP rule")
    return torch.flatten(x, start_dim, end_dim), tuple(x.shape)


def _view_forward(op: Any, x: torch.Tensor, *shape: Any, **kwargs: Any) -> tuple:
    # The batch axis stays first: the graph checks the traced shapes (trace.py) before use.
    return getattr(x, op)(*shape, **kwargs), tuple(x.shape)


FLATTEN = Rule(_flatten_forward, _reshape_vjp)
VIEW = Rule(_view_forward, _reshape_vjp)


def _permutation(args: tuple, kwargs: dict) -> tuple[int, ...]:
    dims = kwargs.get("dims", args[0] if len(args) == 1 else args)
    return tuple(int(d) for d in dims)


def _permute_forward(op: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple:
    perm = tuple(d % x.dim() for d in _permutation(args, kwargs))
    if perm[0] != 0:
        raise NotImplementedError("a permute that moves the batch axis has no VJP rule")
    return x.permute(perm), perm


def _permute_vjp(op: Any, g: torch.Tensor, perm: tuple[int, ...], needs: tuple) -> Grads:
    inverse = sorted(range(len(perm)), key=perm.__getitem__)
    return (g.permute(0, 1, *[inverse[j] + 1 for j in range(1, len(perm))]),)


PERMUTE = Rule(_permute_forward, _permute_vjp)


def _transpose_forward(op: Any, x: torch.Tensor, dim0: int, dim1: int) -> tuple:
    axes = (_g_dim(dim0, x.dim()), _g_dim(dim1, x.dim()))
    return x.transpose(dim0, dim1), axes


def _transpose_vjp(op: Any, g: torch.Tensor, axes: tuple[int, int], needs: tuple) -> Grads:
    return (g.transpose(*axes),)


TRANSPOSE = Rule(_transpose_forward, _transpose_vjp)


# --- chunk (a tuple out; `getitem` picks its parts) and cat


def _chunk_forward(op: Any, x: torch.Tensor, chunks: int, dim: int = 0) -> tuple:
    parts = x.chunk(chunks, dim)
    return parts, (_g_dim(dim, x.dim()), tuple(p.shape[dim] for p in parts))


def _chunk_vjp(op: Any, g: tuple, saved: tuple, needs: tuple) -> Grads:
    """`g`: one gradient per part, None for a part nothing used: zeros there."""
    axis, sizes = saved
    like = next(p for p in g if p is not None)
    parts = []
    for part, size in zip(g, sizes, strict=True):
        if part is None:
            shape = list(like.shape)
            shape[axis] = size
            part = like.new_zeros(shape)
        parts.append(part)
    return (torch.cat(parts, axis),)


CHUNK = Rule(_chunk_forward, _chunk_vjp)


def _cat_forward(op: Any, tensors: list, dim: int = 0) -> tuple:
    rank = tensors[0].dim()
    return torch.cat(tensors, dim), (_g_dim(dim, rank), [t.shape[dim] for t in tensors])


def _cat_vjp(op: Any, g: torch.Tensor, saved: tuple, needs: tuple) -> Grads:
    axis, sizes = saved
    parts = torch.split(g, sizes, axis)
    return ([p if need else None for p, need in zip(parts, needs[0], strict=True)],)


CAT = Rule(_cat_forward, _cat_vjp)


# --- add and mul (both operands may depend on the target: residuals, squeeze-excitation)


def _shape(t: Any) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _add_forward(op: Any, a: Any, b: Any, **kwargs: Any) -> tuple:
    if kwargs.get("alpha", 1) != 1:
        raise NotImplementedError("add with alpha != 1 has no VJP rule")
    return a + b, (_shape(a), _shape(b))


def _add_vjp(op: Any, g: torch.Tensor, shapes: tuple, needs: tuple) -> Grads:
    return tuple(
        _unbroadcast(g, s) if need else None for s, need in zip(shapes, needs, strict=True)
    )


def _mul_forward(op: Any, a: Any, b: Any) -> tuple:
    return a * b, (a, b)


def _mul_vjp(op: Any, g: torch.Tensor, saved: tuple, needs: tuple) -> Grads:
    a, b = saved
    rank = g.dim() - 1
    return (
        _unbroadcast(g * _with_k(b, rank), tuple(a.shape)) if needs[0] else None,
        _unbroadcast(g * _with_k(a, rank), tuple(b.shape)) if needs[1] else None,
    )


ADD = Rule(_add_forward, _add_vjp)
MUL = Rule(_mul_forward, _mul_vjp)


def _stochastic_depth() -> Callable | None:
    try:
        from torchvision.ops import stochastic_depth
    except ImportError:  # pragma: no cover - torchvision is a dependency
        return None
    return stochastic_depth


RULES: dict[Any, Rule] = {
    # modules (looked up along the type's MRO: ReLU6 is a Hardtanh, LayerNorm2d a LayerNorm)
    nn.Conv2d: CONV,
    nn.BatchNorm2d: BATCHNORM,
    nn.Linear: LINEAR,
    nn.ReLU: RELU,
    nn.Hardtanh: HARDTANH,
    nn.SiLU: SILU,
    nn.Sigmoid: SIGMOID,
    nn.Hardswish: HARDSWISH,
    nn.Hardsigmoid: HARDSIGMOID,
    nn.GELU: GELU,
    nn.LayerNorm: LAYER_NORM,
    nn.MaxPool2d: MAXPOOL,
    nn.AvgPool2d: AVGPOOL,
    nn.AdaptiveAvgPool2d: ADAPTIVE_AVGPOOL,
    nn.Flatten: FLATTEN,
    nn.Dropout: IDENTITY,
    nn.Identity: IDENTITY,
    # functions
    F.relu: RELU,
    torch.relu: RELU,
    F.gelu: GELU,
    F.layer_norm: LAYER_NORM,
    F.max_pool2d: MAXPOOL,
    F.avg_pool2d: AVGPOOL,
    F.adaptive_avg_pool2d: ADAPTIVE_AVGPOOL,
    torch.flatten: FLATTEN,
    torch.permute: PERMUTE,
    torch.transpose: TRANSPOSE,
    torch.cat: CAT,
    torch.mean: MEAN,
    operator.add: ADD,
    torch.add: ADD,
    operator.mul: MUL,
    torch.mul: MUL,
    # tensor methods, by name
    "relu": RELU,
    "mean": MEAN,
    "flatten": FLATTEN,
    "view": VIEW,
    "reshape": VIEW,
    "permute": PERMUTE,
    "transpose": TRANSPOSE,
    "chunk": CHUNK,
    "contiguous": CONTIGUOUS,
    "add": ADD,
    "mul": MUL,
}
if _stochastic_depth() is not None:
    RULES[_stochastic_depth()] = STOCHASTIC_DEPTH


def rule_for(kind: str, op: Any) -> Rule | None:
    """The rule of an fx node's op: `kind` "call_module" (op: the module), "call_function" (the
    function) or "call_method" (the method's name); None when there is none."""
    if kind == "call_module":
        return next((RULES[c] for c in type(op).__mro__ if c in RULES), None)
    try:
        return RULES.get(op)
    except TypeError:  # an unhashable target
        return None


def supported_ops() -> list[str]:
    """The names of the ops with a rule, for error messages and docs."""
    return sorted({k if isinstance(k, str) else getattr(k, "__name__", str(k)) for k in RULES})
