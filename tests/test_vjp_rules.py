"""One unit test per VJP rule (gradcam_fast/core/vjp.py) against the real op and torch.func.vjp.

Each case runs a rule's forward and compares it with the op itself, then runs its VJP on K
stacked random cotangents g [B, K, ...] and checks that the result for g[:, k] is what
torch.func.vjp of the real op gives for that cotangent, for K in (1, 3) and batch sizes 1 and
2, in float64. Ties in max pooling, broadcast operands, operands that need no gradient and the
refusals (NotImplementedError) are covered too.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from gradcam_fast.core.vjp import RULES, rule_for, supported_ops

try:
    from torchvision.models.convnext import LayerNorm2d
    from torchvision.ops import stochastic_depth
except ImportError:  # pragma: no cover - torchvision is a dependency
    LayerNorm2d = stochastic_depth = None

BATCHES = (1, 2)
KS = (1, 3)
RTOL, ATOL = 1e-6, 1e-9
DTYPE = torch.float64

Make = Callable[[int, torch.Generator], tuple]


class Case(NamedTuple):
    """An op applied to the positional arguments `make(batch, generator)` returns."""

    id: str
    op: Any  # a module, a function, or a tensor method's name
    make: Make
    kwargs: dict | None = None
    needs: tuple | None = None  # default: True for every tensor argument (in lists too)
    real: Any = None  # the reference op where `op` itself works in place
    drop: int | None = None  # a tuple output's part whose gradient is None


# --- inputs


_PARAMS = torch.Generator().manual_seed(0)


def _module(m: nn.Module) -> nn.Module:
    """`m` in float64 and eval mode, with seeded random parameters and running statistics."""
    m = m.to(DTYPE).eval()
    with torch.no_grad():
        for name, t in [*m.named_parameters(), *m.named_buffers()]:
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=_PARAMS, dtype=t.dtype))
                if name.endswith("running_var"):
                    t.abs_().add_(0.5)
    return m


def _param(*shape: int) -> torch.Tensor:
    """A parameter-like tensor without a batch axis."""
    return torch.randn(shape, generator=_PARAMS, dtype=DTYPE)


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=DTYPE) * scale


def _inputs(*shapes: tuple[int, ...], scale: float = 1.0) -> Make:
    """One random [B, *shape] tensor per shape."""
    return lambda b, gen: tuple(_randn(gen, b, *s, scale=scale) for s in shapes)


def _then(shape: tuple[int, ...], *rest: Any) -> Make:
    """A random [B, *shape] tensor followed by the fixed arguments `rest`."""
    return lambda b, gen: (_randn(gen, b, *shape), *rest)


def _with_values(values: list[float], shape: tuple[int, ...], scale: float = 4.0) -> Make:
    """Random [B, *shape] with every other entry set to one of `values` (exact bounds)."""

    def make(b: int, gen: torch.Generator) -> tuple:
        x = _randn(gen, b, *shape, scale=scale)
        every_other = x.view(-1)[::2]
        reps = every_other.numel() // len(values) + 1
        every_other.copy_(torch.tensor(values, dtype=DTYPE).repeat(reps)[: every_other.numel()])
        return (x,)

    return make


def _ties(shape: tuple[int, ...], *rest: Any) -> Make:
    """Small integers after a ReLU: most pooling windows hold equal maxima (zeros, repeats)."""
    return lambda b, gen: (
        F.relu(torch.randint(-3, 3, (b, *shape), generator=gen)).to(DTYPE),
        *rest,
    )


def _zeros(shape: tuple[int, ...]) -> Make:
    return lambda b, gen: (torch.zeros(b, *shape, dtype=DTYPE),)


def _channels_last(make: Make) -> Make:
    return lambda b, gen: tuple(
        t.contiguous(memory_format=torch.channels_last) for t in make(b, gen)
    )


def _permuted(shape: tuple[int, ...], *rest: Any) -> Make:
    """A non-contiguous [B, ...] tensor: a random [B, *shape] permuted channels-last."""
    return lambda b, gen: (_randn(gen, b, *shape).permute(0, 2, 3, 1), *rest)


# --- running a rule against the real op


def _kind(op: Any) -> str:
    if isinstance(op, nn.Module):
        return "call_module"
    return "call_method" if isinstance(op, str) else "call_function"


def _key(op: Any) -> Any:
    """The RULES key an op is looked up by (a module by its type's MRO)."""
    if isinstance(op, nn.Module):
        return next(c for c in type(op).__mro__ if c in RULES)
    return op


def _call(op: Any, args: tuple, kwargs: dict) -> Any:
    if isinstance(op, str):
        return getattr(args[0], op)(*args[1:], **kwargs)
    return op(*args, **kwargs)


def _tensors(args: Any) -> list[torch.Tensor]:
    if isinstance(args, torch.Tensor):
        return [args]
    if isinstance(args, (list, tuple)):
        return [t for a in args for t in _tensors(a)]
    return []


def _default_needs(args: tuple) -> tuple:
    return tuple(
        [isinstance(t, torch.Tensor) for t in a]
        if isinstance(a, list)
        else isinstance(a, torch.Tensor)
        for a in args
    )


def _positions(needs: tuple, wanted: bool = True) -> list[tuple[int, ...]]:
    """(i,) or (i, j) of each argument whose need is `wanted`."""
    found: list[tuple[int, ...]] = []
    for i, n in enumerate(needs):
        if isinstance(n, (list, tuple)):
            found += [(i, j) for j, m in enumerate(n) if m == wanted]
        elif n == wanted:
            found.append((i,))
    return found


def _at(seq: Any, pos: tuple[int, ...]) -> Any:
    for p in pos:
        seq = seq[p]
    return seq


def _substitute(args: tuple, positions: list, values: tuple) -> list:
    args = list(args)
    for pos, value in zip(positions, values, strict=True):
        if len(pos) == 1:
            args[pos[0]] = value
        else:
            inner = list(args[pos[0]])
            inner[pos[1]] = value
            args[pos[0]] = inner
    return args


def _cotangent(out: Any, k: int, gen: torch.Generator, drop: int | None) -> Any:
    """Random g [B, K, *out.shape[1:]]; for a tuple output one per part, None at `drop`."""
    if isinstance(out, tuple):
        return tuple(None if i == drop else _cotangent(p, k, gen, None) for i, p in enumerate(out))
    return _randn(gen, out.shape[0], k, *out.shape[1:])


def _target(g: Any, out: Any, j: int) -> Any:
    """Target j's cotangent, zeros for a part without gradient."""
    if isinstance(g, tuple):
        return tuple(
            torch.zeros_like(p) if gp is None else gp[:, j] for gp, p in zip(g, out, strict=True)
        )
    return g[:, j]


def _reference(op: Any, args: tuple, kwargs: dict, needs: tuple, cotangents: list) -> list:
    """torch.func.vjp of the real op, per cotangent: one gradient per wanted position."""
    positions = _positions(needs)

    def f(*tensors: torch.Tensor) -> Any:
        return _call(op, tuple(_substitute(args, positions, tensors)), kwargs)

    _, pullback = torch.func.vjp(f, *(_at(args, p) for p in positions))
    return [pullback(c) for c in cotangents]


def _compare_targets(grad: Any, x: torch.Tensor, wants: list, label: str) -> None:
    """grad [B, K, *x.shape[1:]] holds, at [:, j], the reference gradient wants[j]."""
    assert isinstance(grad, torch.Tensor), f"{label}: no gradient"
    assert grad.shape == (x.shape[0], len(wants), *x.shape[1:]), f"{label}: {grad.shape}"
    for j, want in enumerate(wants):
        assert_close(
            grad[:, j], want, rtol=RTOL, atol=ATOL, msg=lambda m, j=j: f"{label} target {j}: {m}"
        )


def _check_grads(got: Any, args: tuple, needs: tuple, wants: list, label: str) -> None:
    assert isinstance(got, tuple), f"{label}: the VJP returned {type(got)}"
    for pos in _positions(needs, wanted=False):  # None where no gradient is wanted
        if pos[0] < len(got) and (len(pos) == 1 or got[pos[0]] is not None):
            assert _at(got, pos) is None, f"{label}: a gradient for unwanted argument {pos}"
    for i, pos in enumerate(_positions(needs)):
        _compare_targets(_at(got, pos), _at(args, pos), [w[i] for w in wants], f"{label} {pos}")


def check(case: Case) -> Any:
    """Run `case` for every batch size and K; return the last forward output."""
    rule = rule_for(_kind(case.op), case.op)
    assert rule is not None and rule is RULES[_key(case.op)]
    kwargs, real = case.kwargs or {}, case.real if case.real is not None else case.op
    out = None
    for batch in BATCHES:
        gen = torch.Generator().manual_seed(100 + batch)
        args = case.make(batch, gen)
        before = [t.clone() for t in _tensors(args)]
        out, saved = rule.forward(case.op, *args, **kwargs)
        for t, b in zip(_tensors(args), before, strict=True):  # never in place
            assert_close(t, b, rtol=0, atol=0, msg=f"{case.id}: the forward changed its input")
        expected = _call(real, args, kwargs)
        assert_close(out, expected, rtol=RTOL, atol=ATOL, msg=lambda m, b=batch: f"B={b}: {m}")
        needs = case.needs if case.needs is not None else _default_needs(args)
        for k in KS:
            g = _cotangent(out, k, gen, case.drop)
            got = rule.vjp(case.op, g, saved, needs)
            wants = _reference(real, args, kwargs, needs, [_target(g, out, j) for j in range(k)])
            _check_grads(got, args, needs, wants, f"{case.id} B={batch} K={k}")
    return out


def _cases(cases: list[Case]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])


# --- convolution, normalization, linear

CONV = [
    Case("3x3 pad 1", _module(nn.Conv2d(4, 6, 3, padding=1)), _inputs((4, 7, 9))),
    Case("1x1 no bias", _module(nn.Conv2d(4, 6, 1, bias=False)), _inputs((4, 5, 5))),
    Case("depthwise", _module(nn.Conv2d(4, 4, 3, padding=1, groups=4)), _inputs((4, 7, 7))),
    Case(
        "depthwise stride 2 even",
        _module(nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4)),
        _inputs((4, 8, 8)),
    ),
    Case("grouped", _module(nn.Conv2d(4, 6, 3, groups=2)), _inputs((4, 6, 7))),
    Case("stride 2 odd", _module(nn.Conv2d(4, 5, 3, stride=2, padding=1)), _inputs((4, 7, 9))),
    Case("stride 2 even", _module(nn.Conv2d(4, 5, 3, stride=2, padding=1)), _inputs((4, 8, 10))),
    Case("1x1 stride 2 even", _module(nn.Conv2d(4, 5, 1, stride=2)), _inputs((4, 8, 8))),
    Case("stride 3", _module(nn.Conv2d(4, 5, 3, stride=3)), _inputs((4, 11, 10))),
    Case("dilation 2", _module(nn.Conv2d(4, 5, 3, dilation=2, padding=2)), _inputs((4, 7, 8))),
    Case(
        "dilation 2 stride 2",
        _module(nn.Conv2d(4, 5, 3, stride=2, dilation=2, padding=2)),
        _inputs((4, 9, 10)),
    ),
    Case("1x3", _module(nn.Conv2d(4, 5, (1, 3), padding=(0, 1))), _inputs((4, 6, 7))),
    Case("3x1", _module(nn.Conv2d(4, 5, (3, 1), padding=(1, 0))), _inputs((4, 6, 7))),
    Case("2x3 stride (2,1)", _module(nn.Conv2d(4, 5, (2, 3), stride=(2, 1))), _inputs((4, 7, 8))),
    Case("7x7 stem", _module(nn.Conv2d(3, 4, 7, stride=2, padding=3)), _inputs((3, 9, 10))),
]


@_cases(CONV)
def test_conv2d(case: Case) -> None:
    """Conv2d's VJP (a conv_transpose2d) restores the input size: groups, strides, dilation."""
    check(case)


BATCHNORM = [
    Case("affine", _module(nn.BatchNorm2d(4)), _inputs((4, 5, 6))),
    Case("not affine", _module(nn.BatchNorm2d(4, affine=False)), _inputs((4, 5, 6))),
    Case("eps 1e-3", _module(nn.BatchNorm2d(4, eps=1e-3)), _inputs((4, 3, 3))),
    # the functional form with running statistics (timm's BatchNormAct2d is not a trace leaf)
    Case(
        "F.batch_norm",
        F.batch_norm,
        _then((4, 5, 6), _param(4), _param(4).abs() + 0.5, _param(4), _param(4), False, 0.1, 1e-3),
        needs=(True, False, False, False, False, False, False, False),
    ),
    Case(
        "F.batch_norm no affine",
        F.batch_norm,
        _then((4, 3, 3), _param(4), _param(4).abs() + 0.5),
        needs=(True, False, False),
    ),
]


@_cases(BATCHNORM)
def test_batchnorm2d(case: Case) -> None:
    """BatchNorm2d in eval: a per-channel scale by the running statistics."""
    check(case)


LINEAR = [
    Case("2-D", _module(nn.Linear(5, 3)), _inputs((5,))),
    Case("4-D channels-last", _module(nn.Linear(4, 6)), _inputs((3, 5, 4))),
    Case("no bias 4-D", _module(nn.Linear(4, 6, bias=False)), _inputs((2, 3, 4))),
    # the functional form, weight and bias from get_attr (timm's Linear is not a trace leaf)
    Case("F.linear", F.linear, _then((5,), _param(3, 5), _param(3)), needs=(True, False, False)),
    Case("F.linear no bias 4-D", F.linear, _then((3, 5, 4), _param(6, 4)), needs=(True, False)),
]


@_cases(LINEAR)
def test_linear(case: Case) -> None:
    """Linear on [B, in] and on channels-last [B, H, W, C] (ConvNeXt's MLPs)."""
    check(case)


# --- activations

_RELU_INPUT = _with_values([0.0], (3, 4, 5))
RELU = [
    Case("nn.ReLU", nn.ReLU(), _RELU_INPUT),
    Case("nn.ReLU inplace", nn.ReLU(inplace=True), _RELU_INPUT, real=nn.ReLU()),
    Case("F.relu", F.relu, _RELU_INPUT),
    Case(
        "F.relu inplace",
        F.relu,
        _RELU_INPUT,
        kwargs={"inplace": True},
        real=lambda x, inplace: F.relu(x),
    ),
    Case("torch.relu", torch.relu, _RELU_INPUT),
    Case("method relu", "relu", _RELU_INPUT),
]


@_cases(RELU)
def test_relu(case: Case) -> None:
    """ReLU in all its spellings, zero gradient at exactly 0, never in place."""
    check(case)


HARDTANH = [
    Case("ReLU6", nn.ReLU6(), _with_values([0.0, 6.0, -1.0, 7.0, 3.0], (3, 4, 5))),
    Case(
        "ReLU6 inplace",
        nn.ReLU6(inplace=True),
        _with_values([0.0, 6.0], (3, 4, 5)),
        real=nn.ReLU6(),
    ),
    Case("Hardtanh default", nn.Hardtanh(), _with_values([-1.0, 1.0], (3, 4, 5), scale=2.0)),
    Case("Hardtanh(-0.5, 2)", nn.Hardtanh(-0.5, 2.0), _with_values([-0.5, 2.0], (3, 4, 5))),
    Case(
        "Hardtanh inplace",
        nn.Hardtanh(-2.0, 1.5, inplace=True),
        _with_values([-2.0, 1.5], (3, 4, 5)),
        real=nn.Hardtanh(-2.0, 1.5),
    ),
]


@_cases(HARDTANH)
def test_hardtanh(case: Case) -> None:
    """Hardtanh and ReLU6: the gradient passes strictly inside the bounds, not at them."""
    check(case)


SILU = [
    Case("SiLU", nn.SiLU(), _inputs((3, 4, 5), scale=4.0)),
    Case("SiLU inplace", nn.SiLU(inplace=True), _inputs((3, 4, 5), scale=4.0), real=nn.SiLU()),
]


@_cases(SILU)
def test_silu(case: Case) -> None:
    """SiLU's derivative s * (1 + x * (1 - s))."""
    check(case)


SIGMOID = [Case("Sigmoid", nn.Sigmoid(), _inputs((3, 4, 5), scale=4.0))]


@_cases(SIGMOID)
def test_sigmoid(case: Case) -> None:
    """Sigmoid's derivative from its saved output."""
    check(case)


_HARD_INPUT = _with_values([-3.0, 3.0, 0.0, -4.0, 4.0, -2.5, 2.5], (3, 4, 5))
HARDSWISH = [
    Case("Hardswish", nn.Hardswish(), _HARD_INPUT),
    Case("Hardswish inplace", nn.Hardswish(inplace=True), _HARD_INPUT, real=nn.Hardswish()),
]


@_cases(HARDSWISH)
def test_hardswish(case: Case) -> None:
    """Hardswish's piecewise derivative, inputs exactly at -3 and 3 included (PyTorch >= 2.7,
    pytorch/pytorch#148049: 0 at -3 and 1 at 3, as in the flat and linear pieces)."""
    check(case)


HARDSIGMOID = [
    Case("Hardsigmoid", nn.Hardsigmoid(), _HARD_INPUT),
    Case("Hardsigmoid inplace", nn.Hardsigmoid(inplace=True), _HARD_INPUT, real=nn.Hardsigmoid()),
]


@_cases(HARDSIGMOID)
def test_hardsigmoid(case: Case) -> None:
    """Hardsigmoid: 1/6 strictly inside (-3, 3), 0 at and beyond -3 and 3."""
    check(case)


_GELU_INPUT = _inputs((3, 4, 5), scale=3.0)
GELU = [
    Case("nn.GELU", nn.GELU(), _GELU_INPUT),
    Case("nn.GELU tanh", nn.GELU(approximate="tanh"), _GELU_INPUT),
    Case("F.gelu", F.gelu, _GELU_INPUT),
    Case("F.gelu none", F.gelu, _GELU_INPUT, kwargs={"approximate": "none"}),
    Case("F.gelu tanh", F.gelu, _GELU_INPUT, kwargs={"approximate": "tanh"}),
]


@_cases(GELU)
def test_gelu(case: Case) -> None:
    """GELU, exact and tanh-approximated, as a module and as F.gelu."""
    check(case)


# --- LayerNorm (channels-last)

_W6, _B6 = _param(6), _param(6)
_NO_PARAMS = (True, False, False, False, False)
LAYER_NORM = [
    Case("nn.LayerNorm", _module(nn.LayerNorm(6)), _inputs((3, 4, 6))),
    Case("nn.LayerNorm 2-D", _module(nn.LayerNorm(5)), _inputs((5,))),
    Case(
        "nn.LayerNorm no affine",
        _module(nn.LayerNorm(6, elementwise_affine=False)),
        _inputs((3, 4, 6)),
    ),
    Case("nn.LayerNorm no bias", _module(nn.LayerNorm(6, bias=False)), _inputs((3, 4, 6))),
    Case("nn.LayerNorm last two axes", _module(nn.LayerNorm((4, 6))), _inputs((3, 4, 6))),
    Case("F.layer_norm", F.layer_norm, _then((3, 4, 6), (6,), _W6, _B6, 1e-6), needs=_NO_PARAMS),
    Case("F.layer_norm no weight", F.layer_norm, _then((3, 4, 6), (6,))),
    Case(
        "F.layer_norm weight only",
        F.layer_norm,
        _then((3, 4, 6), [6], _W6),
        needs=(True, False, False),
    ),
    Case(
        "F.layer_norm kwargs",
        F.layer_norm,
        _then((3, 4, 6), (6,)),
        kwargs={"weight": _W6, "bias": _B6, "eps": 1e-3},
    ),
]


@_cases(LAYER_NORM)
def test_layer_norm(case: Case) -> None:
    """LayerNorm over the last axes, with and without weight, as a module and F.layer_norm."""
    check(case)


@pytest.mark.skipif(LayerNorm2d is None, reason="torchvision's LayerNorm2d is not importable")
def test_layernorm2d_as_traced() -> None:
    """ConvNeXt's LayerNorm2d as fx traces it (permute, F.layer_norm, permute back): the three
    rules chained give LayerNorm2d's VJP."""
    ln = _module(LayerNorm2d(4))
    steps = [("permute", (0, 2, 3, 1)), (F.layer_norm, ((4,), ln.weight, ln.bias, ln.eps))]
    steps.append(("permute", (0, 3, 1, 2)))
    for batch in BATCHES:
        gen = torch.Generator().manual_seed(batch)
        x = y = _randn(gen, batch, 4, 5, 6)
        saved = []
        for op, extra in steps:
            y, s = rule_for(_kind(op), op).forward(op, y, *extra)
            saved.append(s)
        assert_close(y, ln(x), rtol=RTOL, atol=ATOL)
        for k in KS:
            g = grad = _randn(gen, batch, k, 4, 5, 6)
            for (op, extra), s in zip(reversed(steps), reversed(saved), strict=True):
                grad = rule_for(_kind(op), op).vjp(op, grad, s, (True,) + (False,) * len(extra))[0]
            wants = [torch.func.vjp(ln, x)[1](g[:, j])[0] for j in range(k)]
            _compare_targets(grad, x, wants, f"LayerNorm2d B={batch} K={k}")


# --- pooling

_MAX_F = F.max_pool2d
MAXPOOL = [
    Case("2x2 s2", nn.MaxPool2d(2, 2), _inputs((3, 8, 8))),
    Case("2x2 s2 odd drops last row/col", nn.MaxPool2d(2, 2), _inputs((3, 7, 9))),
    Case("2x2 s2 ties", nn.MaxPool2d(2, 2), _ties((3, 8, 8))),
    Case("2x2 odd ties", nn.MaxPool2d(2), _ties((3, 7, 9))),
    Case("2x2 all zero", nn.MaxPool2d(2), _zeros((2, 4, 6))),
    Case("2x2 channels-last ties", nn.MaxPool2d(2), _channels_last(_ties((3, 6, 6)))),
    Case("3x3 s3 ties", nn.MaxPool2d(3), _ties((2, 7, 8))),
    Case("2x3 tiles ties", nn.MaxPool2d((2, 3)), _ties((2, 6, 9))),
    Case("3x3 s2 p1", nn.MaxPool2d(3, 2, 1), _inputs((3, 8, 8))),
    Case("3x3 s2 p1 ties", nn.MaxPool2d(3, 2, 1), _ties((3, 7, 9))),
    Case("3x3 s2 ceil (GoogLeNet)", nn.MaxPool2d(3, 2, ceil_mode=True), _ties((3, 8, 8))),
    Case("3x3 s2 ceil odd", nn.MaxPool2d(3, 2, ceil_mode=True), _inputs((3, 9, 10))),
    Case("3x3 s2 p1 ceil ties", nn.MaxPool2d(3, 2, 1, ceil_mode=True), _ties((3, 8, 9))),
    Case("2x2 s2 ceil ties", nn.MaxPool2d(2, 2, ceil_mode=True), _ties((3, 7, 7))),
    Case("2x2 s1 overlapping ties", nn.MaxPool2d(2, 1), _ties((2, 5, 5))),
    Case("3x3 s1 p1 all zero", nn.MaxPool2d(3, 1, 1), _zeros((2, 4, 5))),
    Case("2x2 dilation 2 ties", nn.MaxPool2d(2, 2, dilation=2), _ties((2, 8, 8))),
    Case("F 2", _MAX_F, _ties((3, 8, 8), 2)),
    Case("F 2 2 odd", _MAX_F, _ties((3, 7, 9), 2, 2)),
    Case("F (2,2) (2,2)", _MAX_F, _ties((3, 6, 6), (2, 2), (2, 2))),
    Case("F 3 2 1", _MAX_F, _ties((3, 7, 8), 3, 2, 1)),
    Case(
        "F kwargs ceil",
        _MAX_F,
        _ties((3, 8, 8)),
        kwargs={"kernel_size": 3, "stride": 2, "ceil_mode": True},
    ),
]


@_cases(MAXPOOL)
def test_maxpool2d(case: Case) -> None:
    """MaxPool2d routes each window's gradient to its FIRST maximum, as PyTorch does, tied
    windows, floor and ceil mode, padding and overlapping windows included."""
    check(case)


AVGPOOL = [
    Case("2x2 s2", nn.AvgPool2d(2, 2), _inputs((3, 8, 8))),
    Case("2x2 s2 odd", nn.AvgPool2d(2, 2), _inputs((3, 7, 9))),
    Case("3x3 s1 p1", nn.AvgPool2d(3, 1, 1, count_include_pad=True), _inputs((3, 6, 7))),
    Case("3x3 s2 p1 even", nn.AvgPool2d(3, 2, 1), _inputs((3, 8, 8))),
    Case("3x3 s2", nn.AvgPool2d(3, 2), _inputs((3, 9, 8))),
    Case("2x3", nn.AvgPool2d((2, 3)), _inputs((3, 6, 7))),
    Case("no pad exclude", nn.AvgPool2d(2, count_include_pad=False), _inputs((3, 6, 6))),
    Case("ceil without effect", nn.AvgPool2d(2, 2, ceil_mode=True), _inputs((3, 8, 8))),
    Case("F 2", F.avg_pool2d, _then((3, 8, 8), 2)),
    Case("F 3 1 1", F.avg_pool2d, _then((3, 5, 7), 3, 1, 1)),
    Case(
        "F kwargs",
        F.avg_pool2d,
        _then((3, 8, 9)),
        kwargs={"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": True},
    ),
]


@_cases(AVGPOOL)
def test_avgpool2d(case: Case) -> None:
    """AvgPool2d's VJP, a depthwise conv_transpose2d of 1/(kh*kw), restores the input size."""
    check(case)


_ADAPTIVE_F = F.adaptive_avg_pool2d
ADAPTIVE_AVGPOOL = [
    Case("to 1", nn.AdaptiveAvgPool2d(1), _inputs((4, 7, 7))),
    Case("to (1,1) non-square", nn.AdaptiveAvgPool2d((1, 1)), _inputs((4, 5, 6))),
    Case("same size", nn.AdaptiveAvgPool2d(7), _inputs((4, 7, 7))),
    Case("5x5 to 3x3", nn.AdaptiveAvgPool2d(3), _inputs((4, 5, 5))),
    Case("3x3 to 7x7", nn.AdaptiveAvgPool2d(7), _inputs((4, 3, 3))),
    Case("6x6 to 2x2", nn.AdaptiveAvgPool2d(2), _inputs((4, 6, 6))),
    Case("7x5 to 3x2", nn.AdaptiveAvgPool2d((3, 2)), _inputs((4, 7, 5))),
    Case("(None, 2)", nn.AdaptiveAvgPool2d((None, 2)), _inputs((4, 5, 6))),
    Case("F to 1", _ADAPTIVE_F, _then((4, 5, 6), 1)),
    Case("F 5x5 to (3,3)", _ADAPTIVE_F, _then((4, 5, 5), (3, 3))),
    Case("F kwargs 5x7 to 2", _ADAPTIVE_F, _then((4, 5, 7)), kwargs={"output_size": 2}),
]


@_cases(ADAPTIVE_AVGPOOL)
def test_adaptive_avgpool2d(case: Case) -> None:
    """AdaptiveAvgPool2d: global mean, identity, and overlapping bins of non-divisor sizes."""
    check(case)


MEAN = [
    Case("torch.mean [2,3]", torch.mean, _then((4, 3, 5), [2, 3])),
    Case(
        "torch.mean keepdim",
        torch.mean,
        _then((4, 3, 5)),
        kwargs={"dim": (2, 3), "keepdim": True},
    ),
    Case("torch.mean keepdim positional", torch.mean, _then((4, 3, 5), (2, 3), True)),
    Case("method (2,3)", "mean", _then((4, 3, 5), (2, 3))),
    Case("method [-2,-1] keepdim", "mean", _then((4, 3, 5), [-2, -1]), kwargs={"keepdim": True}),
    Case("method dim 1", "mean", _then((4, 3, 5), 1)),
    Case("method dim=3", "mean", _then((4, 3, 5)), kwargs={"dim": 3}),
]


@_cases(MEAN)
def test_mean(case: Case) -> None:
    """mean over non-batch axes, with and without keepdim: g spread evenly."""
    check(case)


# --- shapes

FLATTEN = [
    Case("nn.Flatten", nn.Flatten(), _inputs((4, 3, 3))),
    Case("nn.Flatten(2)", nn.Flatten(2), _inputs((4, 3, 3))),
    Case("torch.flatten 1", torch.flatten, _then((4, 3, 3), 1)),
    Case("torch.flatten 1 2", torch.flatten, _then((4, 3, 5), 1, 2)),
    Case("method 1", "flatten", _then((4, 3, 3), 1)),
    Case("method start_dim=1", "flatten", _then((4, 3, 3)), kwargs={"start_dim": 1}),
]


@_cases(FLATTEN)
def test_flatten(case: Case) -> None:
    """flatten from axis 1 (or later) as a module, function and method."""
    check(case)


VIEW = [
    Case("view B,-1", "view", lambda b, gen: (_randn(gen, b, 4, 3, 3), b, -1)),
    Case("view (B,2,2,9)", "view", lambda b, gen: (_randn(gen, b, 4, 3, 3), (b, 2, 2, 9))),
    Case("reshape B,4,9", "reshape", lambda b, gen: (_randn(gen, b, 4, 3, 3), b, 4, 9)),
    Case("reshape unflatten", "reshape", lambda b, gen: (_randn(gen, b, 36), b, 4, 3, 3)),
    Case(
        "reshape non-contiguous", "reshape", lambda b, gen: (*_permuted((4, 3, 3))(b, gen), b, -1)
    ),
]


@_cases(VIEW)
def test_view_reshape(case: Case) -> None:
    """view/reshape keeping the batch axis: the gradient is reshaped back."""
    check(case)


PERMUTE = [
    Case("torch.permute to channels-last", torch.permute, _then((3, 4, 5), (0, 2, 3, 1))),
    Case("torch.permute back", torch.permute, _then((3, 4, 5), [0, 3, 1, 2])),
    Case("torch.permute dims=", torch.permute, _then((3, 4, 5)), kwargs={"dims": (0, 2, 3, 1)}),
    Case("method varargs", "permute", _then((3, 4, 5), 0, 2, 3, 1)),
    Case("method list back", "permute", _then((3, 4, 5), [0, 3, 1, 2])),
    Case("method negative", "permute", _then((3, 4, 5), 0, -1, 1, 2)),
    Case("method 3-D", "permute", _then((3, 4), 0, 2, 1)),
]


@_cases(PERMUTE)
def test_permute(case: Case) -> None:
    """permute keeping the batch axis first: the gradient goes through the inverse."""
    check(case)


TRANSPOSE = [
    Case("torch.transpose 1 2", torch.transpose, _then((3, 4, 5), 1, 2)),
    Case("method 1 2", "transpose", _then((3, 4, 5), 1, 2)),
    Case("method 2 1", "transpose", _then((3, 4, 5), 2, 1)),
    Case("method -1 -2", "transpose", _then((3, 4, 5), -1, -2)),
    Case("method 3-D tokens", "transpose", _then((4, 6), 1, 2)),
]


@_cases(TRANSPOSE)
def test_transpose(case: Case) -> None:
    """transpose of two non-batch axes."""
    check(case)


CHUNK = [
    Case("2 on dim 1", "chunk", _then((4, 3, 3), 2, 1)),
    Case("first part unused", "chunk", _then((4, 3, 3), 2, 1), drop=0),
    Case("second part unused", "chunk", _then((4, 3, 3), 2, 1), drop=1),
    Case("uneven 3+2, second unused", "chunk", _then((5, 3, 3), 2, 1), drop=1),
    Case("3 of 4 channels gives 2 parts", "chunk", _then((4, 3, 3), 3), kwargs={"dim": 1}),
    Case("last axis", "chunk", _then((4, 3, 6), 2, -1), drop=0),
]


@_cases(CHUNK)
def test_chunk(case: Case) -> None:
    """chunk: the parts' gradients concatenated, zeros for a part without one."""
    check(case)


def _cat_inputs(channels: tuple[int, ...], hw: tuple[int, int] = (3, 4), *rest: Any) -> Make:
    return lambda b, gen: ([_randn(gen, b, c, *hw) for c in channels], *rest)


CAT = [
    Case("2 tensors", torch.cat, _cat_inputs((2, 3), (3, 4), 1)),
    Case("3 tensors", torch.cat, _cat_inputs((2, 3, 1)), kwargs={"dim": 1}),
    Case(
        "3 tensors, middle no gradient",
        torch.cat,
        _cat_inputs((2, 3, 1)),
        kwargs={"dim": 1},
        needs=([True, False, True],),
    ),
    Case(
        "2 tensors, first no gradient",
        torch.cat,
        _cat_inputs((2, 3), (3, 4), 1),
        needs=([False, True], False),
    ),
    Case("dim -3", torch.cat, _cat_inputs((2, 2), (3, 4), -3)),
    Case("dim 2", torch.cat, lambda b, gen: ([_randn(gen, b, 2, h, 4) for h in (1, 3)], 2)),
]


SLICE = [
    Case("channels 1:4", operator.getitem, _then((6, 4, 4), (slice(None), slice(1, 4)))),
    Case("first channels", operator.getitem, _then((6, 4, 4), (slice(None), slice(None, 3)))),
    Case("ellipsis then last axis", operator.getitem, _then((4, 5, 6), (..., slice(2, None)))),
    Case("negative stop", operator.getitem, _then((4, 5, 6), (slice(None), slice(None, -1)))),
    Case("everything", operator.getitem, _then((4, 3, 3), (slice(None),) * 4)),
]


@_cases(SLICE)
def test_slice(case: Case) -> None:
    """x[:, a:b, ...] (GhostNet's first channels): the gradient padded back with zeros."""
    check(case)


@_cases(CAT)
def test_cat(case: Case) -> None:
    """cat: the gradient split back, None for a tensor that needs none."""
    check(case)


# --- add and mul

_C11, _C = _param(4, 1, 1), _param(4)
_BOTH = ((4, 5, 6), (4, 5, 6))
_PER_CHANNEL = ((4, 5, 6), (4, 1, 1))
ADD = [
    Case("operator same shape", operator.add, _inputs(*_BOTH)),
    Case("operator broadcast [B,C,1,1]", operator.add, _inputs(*_PER_CHANNEL)),
    Case("operator broadcast first", operator.add, _inputs((4, 1, 1), (4, 5, 6))),
    Case("torch.add [B,1,H,W]", torch.add, _inputs((4, 5, 6), (1, 5, 6))),
    Case("torch.add alpha=1", torch.add, _inputs(*_BOTH), kwargs={"alpha": 1}),
    Case("method broadcast", "add", _inputs(*_PER_CHANNEL)),
    Case("method number", "add", _then((4, 5, 6), 3.0)),
    Case("operator number", operator.add, _then((4, 5, 6), 1.5)),
    Case("operator number first", operator.add, lambda b, gen: (2.0, _randn(gen, b, 4, 5, 6))),
    Case("operator one needs none", operator.add, _inputs(*_BOTH), needs=(True, False)),
    Case("operator parameter", operator.add, _then((4, 5, 6), _C11), needs=(True, False)),
]


@_cases(ADD)
def test_add(case: Case) -> None:
    """add: broadcast operands get g summed over their broadcast axes; numbers get None."""
    check(case)


MUL = [
    Case("operator squeeze-excitation", operator.mul, _inputs(*_PER_CHANNEL)),
    Case("operator scale first", operator.mul, _inputs((4, 1, 1), (4, 5, 6))),
    Case("operator spatial [B,1,H,W]", operator.mul, _inputs((4, 5, 6), (1, 5, 6))),
    Case("operator same shape", operator.mul, _inputs(*_BOTH)),
    Case("torch.mul", torch.mul, _inputs(*_PER_CHANNEL)),
    Case("method", "mul", _inputs(*_PER_CHANNEL)),
    Case("method number", "mul", _then((4, 5, 6), 2.0)),
    Case(
        "layer scale [C,1,1] first",
        operator.mul,
        lambda b, gen: (_C11, _randn(gen, b, 4, 5, 6)),
        needs=(False, True),
    ),
    Case("parameter [C,1,1] second", operator.mul, _then((4, 5, 6), _C11), needs=(True, False)),
    Case("parameter [C] channels-last", operator.mul, _then((5, 6, 4), _C), needs=(True, False)),
    Case("number", operator.mul, _then((4, 5, 6), 0.5)),
    Case("number first", operator.mul, lambda b, gen: (0.5, _randn(gen, b, 4, 5, 6))),
]


@_cases(MUL)
def test_mul(case: Case) -> None:
    """mul: both operands depending on the input (squeeze-excitation), a parameter without
    batch axis (layer scale), a number."""
    check(case)


# --- identities

IDENTITY = [
    Case("Dropout eval", _module(nn.Dropout(0.5)), _inputs((4, 3, 3))),
    Case(
        "Dropout inplace eval",
        _module(nn.Dropout(0.3, inplace=True)),
        _inputs((4, 3, 3)),
        real=nn.Identity(),
    ),
    Case("Identity", nn.Identity(), _inputs((4, 3, 3))),
    Case("F.dropout eval", F.dropout, _then((4, 3, 3), 0.2), kwargs={"training": False}),
    Case("F.dropout p=0", F.dropout, _then((4, 3, 3), 0.0, True)),
]


@_cases(IDENTITY)
def test_identity(case: Case) -> None:
    """Dropout in eval (module or F.dropout with training=False) and Identity pass the
    gradient through."""
    check(case)


STOCHASTIC_DEPTH = (
    []
    if stochastic_depth is None
    else [
        Case("eval row", stochastic_depth, _then((4, 3, 3), 0.2, "row", False)),
        Case(
            "eval batch kwarg",
            stochastic_depth,
            _then((4, 3, 3), 0.5, "batch"),
            kwargs={"training": False},
        ),
        Case("training p=0", stochastic_depth, _then((4, 3, 3), 0.0, "row", True)),
    ]
)


@pytest.mark.skipif(stochastic_depth is None, reason="torchvision is not importable")
@_cases(STOCHASTIC_DEPTH)
def test_stochastic_depth(case: Case) -> None:
    """torchvision's stochastic_depth is the identity out of training (or at p=0)."""
    check(case)


CONTIGUOUS = [
    Case("permuted", "contiguous", _permuted((4, 3, 5))),
    Case("already contiguous", "contiguous", _inputs((4, 3, 5))),
    Case(
        "channels_last format",
        "contiguous",
        _inputs((4, 3, 5)),
        kwargs={"memory_format": torch.channels_last},
    ),
]


@_cases(CONTIGUOUS)
def test_contiguous(case: Case) -> None:
    """contiguous returns a tensor contiguous in the asked format; its gradient passes through."""
    memory_format = (case.kwargs or {}).get("memory_format", torch.contiguous_format)
    assert check(case).is_contiguous(memory_format=memory_format)


# --- refusals, lookup, coverage


def _x(shape: tuple[int, ...] = (4, 6, 6)) -> Make:
    return _inputs(shape)


REFUSALS = [
    Case("conv padding same", _module(nn.Conv2d(4, 4, 3, padding="same")), _x()),
    Case("conv reflect", _module(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")), _x()),
    Case("avgpool divisor_override", nn.AvgPool2d(2, divisor_override=3), _x()),
    Case("avgpool exclude pad", nn.AvgPool2d(3, 1, 1, count_include_pad=False), _x()),
    Case("F.avg_pool2d divisor_override", F.avg_pool2d, _then((4, 6, 6), 2, 2, 0, False, True, 4)),
    Case(
        "F.avg_pool2d exclude pad",
        F.avg_pool2d,
        _then((4, 6, 6), 3, 1, 1),
        kwargs={"count_include_pad": False},
    ),
    Case("avgpool ceil windows", nn.AvgPool2d(2, 2, ceil_mode=True), _x((4, 7, 7))),
    Case("mean over every axis", "mean", _x()),
    Case("mean with dtype", "mean", _then((4, 6, 6), (2, 3)), kwargs={"dtype": torch.float32}),
    Case("flatten from 0", torch.flatten, _x()),
    Case("nn.Flatten(0)", nn.Flatten(0), _x()),
    Case("permute moves batch", torch.permute, _then((4, 6, 6), (1, 0, 2, 3))),
    Case("method permute moves batch", "permute", _then((4, 6, 6), 3, 1, 2, 0)),
    Case("transpose batch", "transpose", _then((4, 6, 6), 0, 1)),
    Case("torch.transpose batch", torch.transpose, _then((4, 6, 6), 1, 0)),
    Case("chunk over batch", "chunk", _then((4, 6, 6), 2, 0)),
    Case("cat over batch", torch.cat, _cat_inputs((4, 4), (6, 6), 0)),
    Case("torch.add alpha 2", torch.add, _inputs(*_BOTH), kwargs={"alpha": 2}),
    Case("method add alpha 0.5", "add", _inputs(*_BOTH), kwargs={"alpha": 0.5}),
]
REFUSALS += [
    Case("slice step 2", operator.getitem, _then((4, 6, 6), (slice(None), slice(None, None, 2)))),
    Case("integer index", operator.getitem, _then((4, 6, 6), (slice(None), 1))),
    Case("batch slice", operator.getitem, _then((4, 6, 6), (slice(0, 1),))),
    Case("two ellipses", operator.getitem, _then((4, 6, 6), (..., slice(1, 2), ...))),
    Case("F.batch_norm batch stats", F.batch_norm, _then((4, 6, 6), None, None)),
    Case("F.dropout training", F.dropout, _then((4, 6, 6), 0.2, True)),
    Case("F.dropout default training", F.dropout, _x()),
]
if stochastic_depth is not None:
    REFUSALS += [
        Case("stochastic_depth training", stochastic_depth, _then((4, 6, 6), 0.2, "row", True)),
        Case("stochastic_depth default training", stochastic_depth, _then((4, 6, 6), 0.2, "row")),
    ]


@_cases(REFUSALS)
def test_refusals(case: Case) -> None:
    """Ops a rule cannot differentiate correctly raise NotImplementedError in its forward."""
    rule = rule_for(_kind(case.op), case.op)
    assert rule is not None
    args = case.make(2, torch.Generator().manual_seed(0))
    with pytest.raises(NotImplementedError):
        rule.forward(case.op, *args, **(case.kwargs or {}))


def test_rule_for_lookup() -> None:
    """rule_for follows a module type's MRO (ReLU6 -> Hardtanh) and answers None for ops
    without a rule, unhashable targets included."""
    assert rule_for("call_module", nn.ReLU6()) is RULES[nn.Hardtanh]
    assert rule_for("call_module", nn.ReLU()) is RULES[nn.ReLU]
    assert rule_for("call_function", torch.cat) is RULES[torch.cat]
    assert rule_for("call_method", "view") is RULES["view"]
    assert rule_for("call_module", nn.PReLU()) is None
    assert rule_for("call_module", nn.Dropout2d()) is None
    assert rule_for("call_function", torch.tanh) is None
    assert rule_for("call_method", "sigmoid") is None
    assert rule_for("call_function", [torch.relu]) is None
    if LayerNorm2d is not None:
        assert rule_for("call_module", LayerNorm2d(4)) is RULES[nn.LayerNorm]


def test_supported_ops_names() -> None:
    """supported_ops() names every rule's op, sorted, once each, and no unsupported op."""
    names = supported_ops()
    assert names == sorted(set(names))
    for key in RULES:
        assert (key if isinstance(key, str) else key.__name__) in names
    for name in ("Conv2d", "Hardtanh", "ReLU", "relu", "cat", "add", "max_pool2d", "view"):
        assert name in names
    assert "PReLU" not in names and "tanh" not in names and "ReLU6" not in names


ALL_CASES = [
    *CONV,
    *BATCHNORM,
    *LINEAR,
    *RELU,
    *HARDTANH,
    *SILU,
    *SIGMOID,
    *HARDSWISH,
    *HARDSIGMOID,
    *GELU,
    *LAYER_NORM,
    *MAXPOOL,
    *AVGPOOL,
    *ADAPTIVE_AVGPOOL,
    *MEAN,
    *FLATTEN,
    *VIEW,
    *PERMUTE,
    *TRANSPOSE,
    *CHUNK,
    *SLICE,
    *CAT,
    *ADD,
    *MUL,
    *IDENTITY,
    *STOCHASTIC_DEPTH,
    *CONTIGUOUS,
]


def test_every_rule_is_exercised() -> None:
    """Every key of RULES is the op of at least one case checked against torch.func.vjp."""
    exercised = {_key(case.op) for case in ALL_CASES}
    missing = [key for key in RULES if key not in exercised]
    assert not missing, f"rules without a test: {missing}"
