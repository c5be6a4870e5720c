"""VJP rules of the tensor ops: mean, flatten/view/permute/transpose, chunk and cat, slicing,
add and mul (both operands may depend on the target), each forward beside its VJP (see
vjp.py)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .vjp_base import (
    Grads,
    Rule,
    g_dim,
    unbroadcast,
    with_k,
)

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
    axes = [g_dim(d, len(shape)) for d in dims]
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
    # The batch axis stays first: the graph checks the traced shapes (model/trace.py) before use.
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
    axes = (g_dim(dim0, x.dim()), g_dim(dim1, x.dim()))
    return x.transpose(dim0, dim1), axes


def _transpose_vjp(op: Any, g: torch.Tensor, axes: tuple[int, int], needs: tuple) -> Grads:
    return (g.transpose(*axes),)


TRANSPOSE = Rule(_transpose_forward, _transpose_vjp)


# --- chunk (a tuple out; `getitem` picks its parts) and cat


def _chunk_forward(op: Any, x: torch.Tensor, chunks: int, dim: int = 0) -> tuple:
    parts = x.chunk(chunks, dim)
    return parts, (g_dim(dim, x.dim()), tuple(p.shape[dim] for p in parts))


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
    return torch.cat(tensors, dim), (g_dim(dim, rank), [t.shape[dim] for t in tensors])


def _cat_vjp(op: Any, g: torch.Tensor, saved: tuple, needs: tuple) -> Grads:
    axis, sizes = saved
    parts = torch.split(g, sizes, axis)
    return ([p if need else None for p, need in zip(parts, needs[0], strict=True)],)


CAT = Rule(_cat_forward, _cat_vjp)


# --- slicing x[:, a:b, ...] (GhostNet keeps the first channels of a cat): g padded back


def _slice_forward(op: Any, x: torch.Tensor, index: Any) -> tuple:
    """Basic slicing with steps of 1 over the non-batch axes; anything else is refused."""
    parts = index if isinstance(index, tuple) else (index,)
    if parts.count(Ellipsis) > 1 or not all(
        p is Ellipsis or (isinstance(p, slice) and p.step in (None, 1)) for p in parts
    ):
        raise NotImplementedError(f"indexing a tensor with {index!r}: only slices of step 1")
    if Ellipsis in parts:
        at = parts.index(Ellipsis)
        fill = (slice(None),) * (x.dim() - len(parts) + 1)
        parts = parts[:at] + fill + parts[at + 1 :]
    parts = parts + (slice(None),) * (x.dim() - len(parts))
    spans = [p.indices(n)[:2] for p, n in zip(parts, x.shape, strict=True)]
    if spans[0] != (0, x.shape[0]):
        raise NotImplementedError("slicing the batch axis has no VJP rule")
    pads = []  # F.pad's order: the last axis first, (before, after) each
    for (start, stop), n in reversed(list(zip(spans[1:], x.shape[1:], strict=True))):
        pads += [start, n - max(start, stop)]
    return x[parts], tuple(pads)


def _slice_vjp(op: Any, g: torch.Tensor, pads: tuple, needs: tuple) -> Grads:
    return (F.pad(g, pads) if any(pads) else g,)


SLICE = Rule(_slice_forward, _slice_vjp)


# --- add and mul (both operands may depend on the target: residuals, squeeze-excitation)


def _shape(t: Any) -> tuple[int, ...] | None:
    return tuple(t.shape) if isinstance(t, torch.Tensor) else None


def _add_forward(op: Any, a: Any, b: Any, **kwargs: Any) -> tuple:
    if kwargs.get("alpha", 1) != 1:
        raise NotImplementedError("add with alpha != 1 has no VJP rule")
    return a + b, (_shape(a), _shape(b))


def _add_vjp(op: Any, g: torch.Tensor, shapes: tuple, needs: tuple) -> Grads:
    return tuple(unbroadcast(g, s) if need else None for s, need in zip(shapes, needs, strict=True))


def _mul_forward(op: Any, a: Any, b: Any) -> tuple:
    return a * b, (a, b)


def _mul_vjp(op: Any, g: torch.Tensor, saved: tuple, needs: tuple) -> Grads:
    a, b = saved
    rank = g.dim() - 1
    return (
        unbroadcast(g * with_k(b, rank), tuple(a.shape)) if needs[0] else None,
        unbroadcast(g * with_k(a, rank), tuple(b.shape)) if needs[1] else None,
    )


ADD = Rule(_add_forward, _add_vjp)
MUL = Rule(_mul_forward, _mul_vjp)
