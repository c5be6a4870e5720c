"""Property tests over what callers may pass: every input either works and gives exactly the
result of its float32 contiguous equivalent, or raises ValueError/TypeError naming the problem.

Rules under test (docs/reliability.md): floating dtypes (float16, bfloat16, float64, ...) are
converted to float32; integer and bool images are refused (they are not normalized); any memory
layout (non-contiguous, channels-last, negative strides, Fortran order) is accepted; NaN and inf
(also float64 values that overflow float32) are refused; an empty batch is refused. Targets: None,
or integer [B, K] arrays/lists/tensors of any integer dtype with values in -N..N-1; floats, bools,
strings, other shapes and out-of-range values are refused.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx

SIZE, K, N = 32, 2, 10
FIELDS = ("cams", "cams_lowres", "target_classes", "logits", "activations", "gradients")
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # seeded: the same examples on every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def torch_session():
    model = make_tiny_vgg(num_classes=N, seed=11)
    return GradCAMSession.from_model(model, image_size=SIZE, num_targets=K, device="cpu")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    model = make_tiny_vgg(num_classes=N, seed=11)
    path = tmp_path_factory.mktemp("hostile") / "tiny.onnx"
    return GradCAMSession(
        export_onnx(model, path, image_size=SIZE, num_targets=K, validate=False), "cpu"
    )


def images_of(seed: int, batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def assert_same(got, expected) -> None:
    for name in FIELDS:
        a, b = getattr(got, name), getattr(expected, name)
        if a is None or b is None:  # optional fields (gradients of the channel-weights model)
            assert a is None and b is None, name
            continue
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), (name, float((a.double() - b.double()).abs().max()))


# ---------------------------------------------------------------------------- dtypes and layouts

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
INT_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool]


def with_layout(x: torch.Tensor, layout: str, as_numpy: bool):
    """`x` (values unchanged) in another memory layout, as a tensor or an array."""
    if as_numpy:
        a = x.numpy()
        return {
            "contiguous": a,
            "fortran": np.asfortranarray(a),
            "negative strides": np.ascontiguousarray(a[..., ::-1])[..., ::-1],
            "strided": np.repeat(a, 2, axis=3)[..., ::2],
            "big-endian or channels-last": a.astype(a.dtype.newbyteorder(">")),
        }[layout]
    return {
        "contiguous": x,
        "fortran": x.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0),
        "negative strides": x,  # torch has no negative strides
        "strided": x.repeat_interleave(2, dim=3)[..., ::2],
        "big-endian or channels-last": x.contiguous(memory_format=torch.channels_last),
    }[layout]


LAYOUTS = ["contiguous", "fortran", "negative strides", "strided", "big-endian or channels-last"]


@PROPERTY
@given(
    dtype=st.sampled_from(FLOAT_DTYPES + INT_DTYPES),
    layout=st.sampled_from(LAYOUTS),
    as_numpy=st.booleans(),
    batch=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_dtypes_and_layouts_convert_or_are_refused(session, dtype, layout, as_numpy, batch, seed):
    if as_numpy and dtype == torch.bfloat16:
        as_numpy = False  # NumPy has no bfloat16
    scale = 60.0 if not dtype.is_floating_point and dtype != torch.bool else 1.0
    x = (images_of(seed, batch) * scale).to(dtype)
    given_images = with_layout(x, layout, as_numpy)
    if not dtype.is_floating_point:
        with pytest.raises(TypeError, match=r"floating point, normalized.*preprocess"):
            session(given_images)
        return
    got = session(given_images, [[-1, 3]] * batch)
    assert_same(got, session(x.to(torch.float32).contiguous(), [[-1, 3]] * batch))


def test_single_image_and_numpy_views_match(session):
    x = images_of(1, 1)
    expected = session(x)
    assert_same(session(x[0]), expected)  # [3, S, S]
    assert_same(session(x[0].numpy()), expected)
    assert_same(session(x.expand(3, 3, SIZE, SIZE)), session(x.repeat(3, 1, 1, 1)))  # stride 0


# ---------------------------------------------------------------------------- shapes


@PROPERTY
@given(shape=st.lists(st.sampled_from([0, 1, 2, 3, 4, SIZE, SIZE + 1]), min_size=0, max_size=5))
def test_shapes_work_or_name_the_expected_shape(session, shape):
    x = torch.zeros(shape)
    valid = (len(shape) == 4 and shape[0] >= 1 and shape[1:] == [3, SIZE, SIZE]) or shape == [
        3,
        SIZE,
        SIZE,
    ]
    if valid:
        result = session(x)
        assert result.cams.shape == (shape[0] if len(shape) == 4 else 1, K, SIZE, SIZE)
        return
    pattern = (
        r"empty batch"
        if len(shape) == 4 and shape[0] == 0 and shape[1:] == [3, 32, 32]
        else (r"expected images of shape \[B, 3, 32, 32\]")
    )
    with pytest.raises(ValueError, match=pattern):
        session(x)


@pytest.mark.parametrize(
    ("images", "error", "match"),
    [
        (torch.tensor(1.0), ValueError, r"expected images of shape .* got \[\]"),
        (np.float32(1.0), TypeError, r"torch.Tensor or numpy.ndarray"),
        (np.array([["a"]]), TypeError, r"numeric array"),
        (np.zeros((1, 3, SIZE, SIZE), dtype=object), TypeError, r"numeric array"),
        (np.ma.zeros((1, 3, SIZE, SIZE)), TypeError, r"masked array"),
        (torch.zeros(1, 3, SIZE, SIZE).to_sparse(), TypeError, r"dense tensor.*sparse"),
        (torch.zeros(1, 3, SIZE, SIZE, device="meta"), TypeError, r"dense tensor.*meta"),
        (torch.zeros(1, 3, SIZE, SIZE, dtype=torch.complex64), TypeError, r"floating point"),
        (torch.zeros(2, 3, SIZE, SIZE, dtype=torch.float64) + 1e39, ValueError, r"infinite"),
    ],
    ids=[
        "0-d",
        "numpy-scalar",
        "strings",
        "object",
        "masked",
        "sparse",
        "meta",
        "complex",
        "f64-overflow",
    ],
)
def test_odd_image_objects_are_refused(session, images, error, match):
    with pytest.raises(error, match=match):
        session(images)


def test_longdouble_and_big_endian_arrays_are_converted(session):
    x = images_of(2, 2)
    expected = session(x)
    assert_same(session(x.numpy().astype(np.longdouble)), expected)
    assert_same(session(x.numpy().astype(">f4")), expected)


@PROPERTY
@given(
    value=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    dtype=st.sampled_from([torch.float16, torch.float32, torch.float64]),
    index=st.tuples(*(st.integers(0, n - 1) for n in (3, 3, SIZE, SIZE))),
)
def test_nan_and_inf_are_refused(session, value, dtype, index):
    x = images_of(3, 3).to(dtype)
    x[index] = value
    with pytest.raises(ValueError, match=r"1 NaN or infinite values"):
        session(x)


# ---------------------------------------------------------------------------- targets


def target_cases(batch: int):
    """(description, targets, expected int64 [B, K] or the exception type and message)."""
    in_range = st.integers(-N, N - 1)
    any_int = st.integers(-3 * N, 3 * N)
    grid = st.lists(st.lists(any_int, min_size=K, max_size=K), min_size=batch, max_size=batch)
    int_dtypes = st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16])
    return st.one_of(
        st.just(("none", None)),
        any_int.map(lambda t: ("int", t)),
        st.lists(in_range, min_size=batch, max_size=batch).map(lambda t: ("list", t)),
        grid.map(lambda t: ("grid", t)),
        st.tuples(grid, int_dtypes).map(lambda a: ("array", np.array(a[0]).astype(a[1]))),
        grid.map(lambda t: ("tensor", torch.tensor(t, dtype=torch.int32))),
        grid.map(lambda t: ("float", np.array(t, dtype=np.float32))),
        grid.map(lambda t: ("bool", torch.tensor(t) > 0)),
        st.lists(
            st.lists(in_range, min_size=K, max_size=K), min_size=batch + 1, max_size=batch + 1
        ).map(lambda t: ("too many rows", t)),
        grid.map(lambda t: ("3-d", [[[v] for v in row] for row in t])),
        st.sampled_from(["-1", b"\x01", 1.5, True, {0: 1}, [None] * batch]).map(
            lambda t: ("odd", t)
        ),
        st.integers(2**63, 2**80).map(lambda t: ("huge", t)),
    )


def oracle(kind: str, targets, batch: int) -> torch.Tensor | tuple[type, str]:
    """What the session must do with `targets`, worked out independently of as_targets."""
    if kind == "none":
        return torch.tensor([[-1, -2]] * batch)
    if kind in ("int", "list", "huge"):  # one target per image, but the model computes K = 2
        if kind == "huge" or not -N <= (targets if kind == "int" else 0) < N:
            return ValueError, r"out of range|too large"
        return ValueError, rf"computes {K} map\(s\) per image, got 1"
    if kind in ("float", "bool", "odd"):
        return TypeError, r"targets must be"
    if kind == "too many rows":
        return ValueError, rf"shape \[{batch}, K\]"
    if kind == "3-d":
        return ValueError, rf"shape \[{batch}, K\]"
    values = torch.as_tensor(np.asarray(targets)).to(torch.int64)
    if bool(((values < -N) | (values >= N)).any()):
        return ValueError, r"out of range for a model with 10 classes"
    return values


@PROPERTY
@given(data=st.data(), batch=st.integers(1, 3))
def test_targets_of_every_form(session, data, batch):
    kind, targets = data.draw(target_cases(batch), label="targets")
    x = images_of(batch, batch)
    expected = oracle(kind, targets, batch)
    if isinstance(expected, tuple):
        error, match = expected
        with pytest.raises(error, match=match):
            session(x, targets)
        return
    assert_same(session(x, targets), session(x, expected))


# ---------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_same_image_same_map_on_every_call(session, torch_session, backend):
    session = session if backend == "onnxruntime" else torch_session
    x = images_of(4, 3)
    first = session(x)
    for _ in range(5):
        assert_same(session(x), first)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_same_image_same_map_whatever_else_is_in_its_batch(session, torch_session, backend):
    """An image's results do not depend on its batch, within float32 rounding. ONNX Runtime on
    the CPU is bit for bit; the torch backend's oneDNN kernels block by batch size and differ
    by up to ~2e-6 relative (see docs/reliability.md)."""
    session = session if backend == "onnxruntime" else torch_session
    pool = images_of(5, 12)
    alone = [session(pool[i : i + 1], [[-1, 2]]) for i in range(4)]
    gen = torch.Generator().manual_seed(0)
    for batch in (2, 3, 5, 8, 12):
        order = torch.randperm(12, generator=gen)[:batch]
        result = session(pool[order], [[-1, 2]] * batch)
        for pos, i in enumerate(order.tolist()):
            if i >= 4:
                continue
            ref = alone[i]
            assert torch.equal(result.target_classes[pos], ref.target_classes[0])
            for name in ("logits", "activations", "gradients", "cams_lowres"):
                a, b = getattr(result, name)[pos], getattr(ref, name)[0]
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
            torch.testing.assert_close(result.cams[pos], ref.cams[0], rtol=0, atol=1e-5)
