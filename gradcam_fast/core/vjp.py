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

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .vjp_base import Rule
from .vjp_layers import (
    BATCHNORM,
    CONTIGUOUS,
    CONV,
    DROPOUT,
    FUNCTIONAL_BATCHNORM,
    FUNCTIONAL_LINEAR,
    GELU,
    HARDSIGMOID,
    HARDSWISH,
    HARDTANH,
    IDENTITY,
    LAYER_NORM,
    LINEAR,
    RELU,
    SIGMOID,
    SILU,
    STOCHASTIC_DEPTH,
)
from .vjp_pool import ADAPTIVE_AVGPOOL, AVGPOOL, MAXPOOL
from .vjp_tensor import ADD, CAT, CHUNK, FLATTEN, MEAN, MUL, PERMUTE, SLICE, TRANSPOSE, VIEW

__all__ = ["RULES", "Rule", "rule_for", "supported_ops"]


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
    F.linear: FUNCTIONAL_LINEAR,
    F.batch_norm: FUNCTIONAL_BATCHNORM,
    F.dropout: DROPOUT,
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
    operator.getitem: SLICE,  # of a tensor (a tuple's parts are picked by the graph)
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
