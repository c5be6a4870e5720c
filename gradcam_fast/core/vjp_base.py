"""What every VJP rule is built from: the `Rule` pair and the helpers for the target axis K.

Gradients are [B, K, *output_shape[1:]] while saved tensors are [B, ...] (vjp.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

__all__ = [
    "Grads",
    "Rule",
    "back",
    "g_dim",
    "output_padding",
    "over_targets",
    "pair",
    "unbroadcast",
    "with_k",
    "zero",
]

Grads = tuple[Any, ...]


class Rule(NamedTuple):
    """An op's forward (op, *args, **kwargs) -> (y, saved) and VJP (op, g, saved, needs) ->
    one gradient per positional argument."""

    forward: Callable[..., tuple[Any, Any]]
    vjp: Callable[[Any, Any, Any, tuple], Grads]


def pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def zero(g: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=g.dtype, device=g.device)


def over_targets(g: torch.Tensor) -> tuple[torch.Tensor, int]:
    """[B, K, *s] -> ([B*K, *s], K) for ops that want one batch axis."""
    return g.reshape(-1, *g.shape[2:]), g.shape[1]


def back(g: torch.Tensor, k: int) -> torch.Tensor:
    """[B*K, *s] -> [B, K, *s]."""
    return g.reshape(-1, k, *g.shape[1:])


def with_k(t: Any, rank: int) -> Any:
    """A saved operand broadcast against [B, K, ...]: a batched tensor of the output's rank gets
    the K axis; a lower-rank one (a parameter) broadcasts from the right as it is."""
    return t.unsqueeze(1) if isinstance(t, torch.Tensor) and t.dim() == rank else t


def g_dim(dim: int, rank: int) -> int:
    """An axis of a [B, ...] tensor of `rank` axes, in its gradient [B, K, ...]."""
    dim = dim % rank
    if dim == 0:
        raise NotImplementedError("ops over the batch axis have no VJP rule")
    return dim + 1


def unbroadcast(g: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Sum g [B, K, *out[1:]] over the axes an operand of `shape` [B, ...] was broadcast on."""
    if len(shape) != g.dim() - 1:
        raise NotImplementedError(f"broadcast of a [B, ...] operand of shape {list(shape)}")
    axes = [i + 1 for i in range(1, len(shape)) if shape[i] == 1 and g.shape[i + 1] != 1]
    return g.sum(axes, keepdim=True) if axes else g


def output_padding(in_hw, out_hw, stride, padding, dilation, ksize) -> tuple[int, int]:
    return tuple(
        in_hw[i] - ((out_hw[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (ksize[i] - 1) + 1)
        for i in range(2)
    )
