"""VJP rules of the layers: activations, identities in eval, Conv2d, BatchNorm2d, LayerNorm and
Linear, each forward beside its VJP (see vjp.py for the conventions)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .vjp_base import (
    Grads,
    Rule,
    back,
    output_padding,
    over_targets,
    pair,
    zero,
)

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


RELU = _pointwise(_relu, lambda op, y, g: torch.where(y > 0, g, zero(g)), save_output=True)


def _hardtanh_bounds(op: Any) -> tuple[float, float]:
    return (op.min_val, op.max_val) if isinstance(op, nn.Hardtanh) else (0.0, 6.0)


HARDTANH = _pointwise(  # ReLU6 too: PyTorch passes g strictly inside (min, max)
    lambda op, x, *a, **k: F.hardtanh(x, *_hardtanh_bounds(op)),
    lambda op, x, g: torch.where(
        (x > _hardtanh_bounds(op)[0]) & (x < _hardtanh_bounds(op)[1]), g, zero(g)
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
    return torch.where(x <= -3, zero(g), inner)


HARDSWISH = _pointwise(lambda op, x, *a, **k: F.hardswish(x), _hardswish_grad)
HARDSIGMOID = _pointwise(
    lambda op, x, *a, **k: F.hardsigmoid(x),
    lambda op, x, g: torch.where((x > -3) & (x < 3), g / 6, zero(g)),
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


def _dropout_forward(
    op: Any, x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
) -> tuple[torch.Tensor, None]:
    if training and p > 0:
        raise NotImplementedError("F.dropout with training=True: the model is not deterministic")
    return x, None


# F.dropout(x, p, training=self.training), as timm's heads call it: traced in eval, training=False
DROPOUT = Rule(_dropout_forward, _identity_vjp)


# --- Conv2d: conv_transpose2d(g, W), with the output padding that restores the input size


def _conv_forward(layer: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        raise NotImplementedError("only Conv2d with numeric zero padding has a VJP rule")
    return layer(x), tuple(x.shape[-2:])


def _conv_vjp(layer: nn.Conv2d, g: torch.Tensor, input_hw: tuple[int, int], needs: tuple) -> Grads:
    g4, k = over_targets(g)
    stride, padding = pair(layer.stride), pair(layer.padding)
    dilation, ksize = pair(layer.dilation), pair(layer.kernel_size)
    pad = output_padding(input_hw, g4.shape[-2:], stride, padding, dilation, ksize)
    gin = F.conv_transpose2d(g4, layer.weight, None, stride, padding, pad, layer.groups, dilation)
    return (back(gin, k),)


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


def _functional_batchnorm_forward(
    op: Any,
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    if training or running_var is None:
        raise NotImplementedError("F.batch_norm on batch statistics: put the model in eval()")
    y = F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
    scale = torch.rsqrt(running_var + eps)
    return y, scale if weight is None else scale * weight


def _functional_batchnorm_vjp(op: Any, g: torch.Tensor, scale: torch.Tensor, needs: tuple) -> Grads:
    if any(needs[1:]):
        raise NotImplementedError("F.batch_norm with statistics that depend on the target")
    return (g * scale.reshape(-1, *[1] * (g.dim() - 3)),)


# F.batch_norm(x, running_mean, running_var, weight, bias, False, ...): what a BatchNorm2d
# subclass that is not a leaf of the trace (timm's BatchNormAct2d) leaves in the graph
FUNCTIONAL_BATCHNORM = Rule(_functional_batchnorm_forward, _functional_batchnorm_vjp)


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


def _functional_linear_forward(
    op: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    return F.linear(x, weight, bias), weight


def _functional_linear_vjp(op: Any, g: torch.Tensor, weight: torch.Tensor, needs: tuple) -> Grads:
    if any(needs[1:]):
        raise NotImplementedError("F.linear with a weight or bias that depends on the target")
    return (g @ weight,)


# F.linear(x, weight, bias) with parameters read by get_attr: what a Linear subclass that is not
# a leaf of the trace (timm's Linear) leaves in the graph
FUNCTIONAL_LINEAR = Rule(_functional_linear_forward, _functional_linear_vjp)
