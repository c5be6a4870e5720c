"""Timing of every contender, grouped by batch size; each is checked against the eager reference
first (a fast wrong answer fails). Plus K=5 vs K=1, post-processing alone, and export time.

Rounds come from the profile (benchmarks/config.py); the check call doubles as the warm-up.
With --benchmark-disable each timed function runs once, checks included.
"""

from __future__ import annotations

import time

import onnxruntime as ort
import pytest
import torch

from benchmarks.checks import check_output
from benchmarks.config import active_profile
from benchmarks.contenders import (
    CONTENDERS,
    PEERS,
    SESSIONS,
    ContenderUnavailable,
    open_contender,
)
from gradcam_fast import GradCAMSession, export_onnx
from gradcam_fast.cams.postprocess import gradcam_lowres, upsample_normalize
from gradcam_fast.check.compare import compare_with_reference, failing_figures
from gradcam_fast.export.validate import validate_onnx
from gradcam_fast.runtime.ort_backend import session_options

PROFILE = active_profile()
GROUP = ["eager_hook", *PEERS, *SESSIONS, "floor_ort", "torch_no_grad"]
GROUP += ["openvino_float32", "openvino_bfloat16", "openvino_int8"]
POSTPROCESS_ROUNDS = 20
# SessionOptions that change speed or memory; the floor must match the session on each
SETTINGS = ("intra_op_num_threads", "inter_op_num_threads", "graph_optimization_level",
            "execution_mode", "enable_cpu_mem_arena", "enable_mem_pattern")  # fmt: skip
CONFIG_KEYS = ("session.disable_prepacking", "session.intra_op.allow_spinning")


def _open(name, setup):
    try:
        return open_contender(name, setup)
    except ContenderUnavailable as exc:
        pytest.skip(str(exc))


def _requires_grad(setup):
    return [p.requires_grad for p in setup.model.parameters()]


def _check_then_time(benchmark, name, setup, images, reference, group, rounds, k=1):
    flags = _requires_grad(setup)
    contender = _open(name, setup)
    try:
        classes = reference.target_classes
        errors = check_output(name, contender.output(contender.run(images, classes)), reference)
        benchmark.group = group
        benchmark.extra_info.update(
            contender=name, label=CONTENDERS[name].label, batch=images.shape[0], k=k, errors=errors
        )
        benchmark.pedantic(
            contender.run, args=(images, classes), rounds=rounds, iterations=1, warmup_rounds=0
        )
    finally:
        contender.close()
    # contenders share the model: one that left it changed would skew the next one's timing
    assert _requires_grad(setup) == flags, f"{name} left the model's requires_grad changed"


@pytest.mark.parametrize(
    ("batch", "name"),
    [(b, n) for b in PROFILE.batches for n in GROUP],
    ids=[f"b{b}-{n}" for b in PROFILE.batches for n in GROUP],
)
def test_contender(benchmark, profile, setup, images_for, reference_for, batch, name):
    """One contender at one batch size, K=1, explaining the reference's predicted class."""
    images, reference = images_for(batch), reference_for(batch, 1)
    rounds = profile.rounds[batch]
    _check_then_time(benchmark, name, setup, images, reference, f"batch {batch}", rounds)


@pytest.mark.parametrize(
    ("batch", "k"),
    [(b, k) for b in PROFILE.k_batches for k in (1, PROFILE.num_targets)],
    ids=[f"b{b}-k{k}" for b in PROFILE.k_batches for k in (1, PROFILE.num_targets)],
)
def test_num_targets(benchmark, profile, setup, images_for, reference_for, batch, k):
    """The session with K maps per image (the top K classes) against K=1, same batch."""
    name = "gradcam_fast" if k == 1 else f"gradcam_fast_k{k}"
    images, reference, rounds = (
        images_for(batch),
        reference_for(batch, k),
        profile.rounds.get(batch, 3),
    )
    _check_then_time(benchmark, name, setup, images, reference, f"K, batch {batch}", rounds, k=k)


def test_postprocess(benchmark, profile, setup, images_for, reference_for):
    """Post-processing alone (channel weights, weighted sum, ReLU, upsample, min-max) on the
    session's own outputs at the profile's post-processing batch."""
    batch = profile.postprocess_batch
    session = GradCAMSession(setup.paths["gradcam_k1"], device="cpu")
    result = session(images_for(batch), reference_for(batch, 1).target_classes)
    activations, gradients = result.activations, result.gradients

    def postprocess():
        return upsample_normalize(gradcam_lowres(activations, gradients), profile.image_size)

    torch.testing.assert_close(postprocess(), result.cams, rtol=0, atol=0)
    benchmark.group = "post-processing"
    benchmark.extra_info.update(stage="postprocess", batch=batch)
    benchmark.pedantic(postprocess, rounds=POSTPROCESS_ROUNDS, iterations=1, warmup_rounds=1)


def test_export(benchmark, profile, setup, images_for, reference_for, tmp_path):
    """Export time (trace + save) of the K=1 model, and its validation time on its own line.
    The exported file is then judged as validation judges it (LIMITS, with the near-tie share
    rule for the gradients) on the suite's own images against the suite's eager reference."""
    path = tmp_path / "timed_export.onnx"
    benchmark.group = "export"
    options = {"image_size": profile.image_size, "validate": False}
    benchmark.pedantic(
        export_onnx, args=(setup.model, path), kwargs=options, rounds=1, iterations=1
    )
    started = time.perf_counter()
    validate_onnx(path, setup.model)  # raises ExportValidationError beyond the limits
    seconds, size = time.perf_counter() - started, path.stat().st_size
    benchmark.extra_info.update(stage="export", validate_s=seconds, size_bytes=size)
    batch = PROFILE.batches[0]
    reference = reference_for(batch, 1)
    got = GradCAMSession(path, device="cpu")(images_for(batch), reference.target_classes)
    errors = compare_with_reference(got, reference)
    assert failing_figures(errors) == [], errors


def test_floor_uses_the_session_settings(setup):
    """The floor's ONNX Runtime settings are the session's: same threads, level and mode."""
    session = GradCAMSession(setup.paths["gradcam_k1"], device="cpu")._runner.session
    assert isinstance(session, ort.InferenceSession), type(session)
    ours = session.get_session_options()
    floor = session_options()
    for attr in SETTINGS:
        assert getattr(ours, attr) == getattr(floor, attr), attr
    for key in CONFIG_KEYS:
        assert _config(ours, key) == _config(floor, key), key


def _config(options, key):
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # not set
        return None
