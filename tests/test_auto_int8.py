"""precision="auto" keeps an int8 model only where it holds the fidelity limits and pays on this
CPU (issue 21: auto never slower than float32; issue 22: int8 is slower than float32 on
MobileNet-V3). The speed is measured once, when the int8 model is made, and kept beside it;
these tests pin what auto does with a measured figure, never how fast anything is."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx
from gradcam_fast.runtime import int8_cache, speed_trial
from gradcam_fast.runtime.backends import AUTO_INT8_MIN_SPEEDUP

SIZE = 40


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A cache folder per test, and a CPU row with ONNX Runtime int8 as its only option
    (VNNI), so that auto's choices do not depend on OpenVINO or on this machine."""
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", "avx512_vnni")
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def float32_file(tmp_path_factory):
    tiny = make_tiny_vgg([8, "M", 16, "M", 32, "M"], pool=3)
    path = tmp_path_factory.mktemp("auto") / "cw.onnx"
    return export_onnx(tiny, path, image_size=SIZE, channel_weights_only=True, validate=False)


def _photos(seed: int = 3) -> torch.Tensor:
    return torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _speed_of(monkeypatch, speedup: float) -> None:
    monkeypatch.setattr(int8_cache, "measured_speedup", lambda path: speedup)


def test_the_int8_model_is_timed_when_made_and_the_figure_kept_beside_it(float32_file, own_cache):
    session = GradCAMSession(float32_file, device="cpu", precision="int8", calibration=_photos())
    assert session.precision == "int8"
    [made] = (own_cache / "int8").glob("*.onnx")
    record = json.loads(made.with_name(made.name + int8_cache.SPEED_SUFFIX).read_text())
    assert set(record["by_batch"]) == {"1", "8"} and record["rounds"] == speed_trial.SPEED_ROUNDS
    assert math.isfinite(record["speedup"]) and record["speedup"] > 0
    assert record["speedup"] == min(record["by_batch"].values())  # the slower batch decides
    assert int8_cache.measured_speedup(made) == record["speedup"]
    assert record["cpu"]  # the machine the figure belongs to
    assert not list((own_cache / "int8").glob(".int8-*"))  # nothing staged is left


def test_a_missing_or_broken_speed_record_reads_as_not_measured(tmp_path):
    model = tmp_path / "m.onnx"
    assert int8_cache.measured_speedup(model) is None
    (tmp_path / ("m.onnx" + int8_cache.SPEED_SUFFIX)).write_text("{not json")
    assert int8_cache.measured_speedup(model) is None


def test_auto_passes_over_an_int8_model_that_is_not_faster(float32_file, monkeypatch):
    _speed_of(monkeypatch, 0.7)
    with pytest.warns(RuntimeWarning, match=r"auto passes over onnxruntime int8.*0\.70x"):
        session = GradCAMSession(
            float32_file, device="cpu", precision="auto", calibration=_photos()
        )
    assert (session.backend, session.precision) == ("onnxruntime", "float32")
    assert torch.isfinite(session(_photos(4)).cams).all()


def test_auto_keeps_an_int8_model_that_pays(float32_file, monkeypatch, recwarn):
    _speed_of(monkeypatch, AUTO_INT8_MIN_SPEEDUP + 0.5)
    session = GradCAMSession(float32_file, device="cpu", precision="auto", calibration=_photos())
    assert (session.backend, session.precision) == ("onnxruntime", "int8")
    assert not [w for w in recwarn if "passes over" in str(w.message)]


def test_explicit_int8_runs_but_says_float32_is_faster(float32_file, monkeypatch):
    _speed_of(monkeypatch, 0.7)
    with pytest.warns(RuntimeWarning, match=r"0\.70x.*precision='float32' is faster here"):
        session = GradCAMSession(
            float32_file, device="cpu", precision="int8", calibration=_photos()
        )
    assert session.precision == "int8"


def test_auto_passes_over_a_refused_int8_model_and_explicit_int8_raises(float32_file, monkeypatch):
    def refuse(*args, **kwargs):
        raise int8_cache.Int8ValidationError("beyond the int8 limits (maps r 0.5)")

    monkeypatch.setattr(int8_cache, "int8_model", refuse)
    with pytest.warns(RuntimeWarning, match=r"auto passes over onnxruntime int8: beyond"):
        session = GradCAMSession(
            float32_file, device="cpu", precision="auto", calibration=_photos()
        )
    assert (session.backend, session.precision) == ("onnxruntime", "float32")
    with pytest.raises(int8_cache.Int8ValidationError, match=r"maps r 0\.5"):
        GradCAMSession(float32_file, device="cpu", precision="int8", calibration=_photos())


def test_a_refusal_of_vanishing_logits_says_why_and_what_to_do():
    vanishing = int8_cache._advice(torch.full((2, 10), 3e-12))
    assert "vanish" in vanishing and "trained model" in vanishing
    assert "calibration photos" in int8_cache._advice(torch.randn(2, 10))
