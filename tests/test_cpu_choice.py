"""`backend="auto"` / `precision="auto"`: one test per row of cpu_choice's table, and the rules
around it (int8 only with calibration, ONNX Runtime without OpenVINO, explicit values kept)."""

from __future__ import annotations

import sys

import pytest

from gradcam_fast.runtime.cpu_choice import FLAGS_ENV, ROWS, choose, cpu_flags, resolve

SAPPHIRE_RAPIDS = {"avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile"}
ZEN4 = {"avx512f", "avx512_bf16", "avx512_vnni", "avx2"}
CASCADE_LAKE = {"avx512f", "avx512_vnni", "avx2"}
ALDER_LAKE = {"avx2", "avx_vnni"}
HASWELL = {"avx2", "fma"}


def test_amx_row_picks_openvino_int8_with_calibration_else_bfloat16():
    assert choose(SAPPHIRE_RAPIDS, calibration=True)[:2] == ("openvino", "int8")
    backend, precision, reason = choose(SAPPHIRE_RAPIDS)
    assert (backend, precision) == ("openvino", "bfloat16")
    assert "AMX" in reason and "issue's author" in reason


def test_zen4_row_picks_onnx_runtime_int8_with_calibration_else_openvino_bfloat16():
    assert choose(ZEN4, calibration=True)[:2] == ("onnxruntime", "int8")
    backend, precision, reason = choose(ZEN4)
    assert (backend, precision) == ("openvino", "bfloat16")
    assert "Zen 4" in reason


def test_vnni_row_picks_onnx_runtime_int8_with_calibration_else_float32():
    assert choose(CASCADE_LAKE, calibration=True)[:2] == ("onnxruntime", "int8")
    backend, precision, reason = choose(CASCADE_LAKE)
    assert (backend, precision) == ("onnxruntime", "float32")
    assert "no calibration" in reason


def test_avx_vnni_row_picks_onnx_runtime_int8():
    assert choose(ALDER_LAKE, calibration=True)[:2] == ("onnxruntime", "int8")


def test_avx2_row_picks_openvino_int8_then_onnx_runtime_int8_with_calibration_else_float32():
    assert choose(HASWELL, calibration=True)[:2] == ("openvino", "int8")
    assert choose(HASWELL, calibration=True, openvino=False)[:2] == ("onnxruntime", "int8")
    backend, precision, reason = choose(HASWELL)
    assert (backend, precision) == ("onnxruntime", "float32")
    assert "AVX2, no VNNI" in reason and "no calibration" in reason


def test_other_cpus_keep_exact_float32_onnx_runtime():
    assert choose({"sse4_2", "avx"}, calibration=True)[:2] == ("onnxruntime", "float32")
    assert choose(set())[:2] == ("onnxruntime", "float32")


def test_without_openvino_auto_takes_the_rows_onnx_runtime_options():
    assert choose(SAPPHIRE_RAPIDS, openvino=False)[:2] == ("onnxruntime", "float32")
    assert choose(SAPPHIRE_RAPIDS, calibration=True, openvino=False)[:2] == (
        "onnxruntime",
        "int8",
    )
    assert choose(ZEN4, calibration=True, openvino=False)[:2] == ("onnxruntime", "int8")
    assert choose(ZEN4, openvino=False)[:2] == ("onnxruntime", "float32")


def test_every_row_is_reachable_and_the_last_matches_anything():
    assert ROWS[-1].flags == frozenset()
    for row in ROWS:
        choice = choose(row.flags, calibration=True)
        assert choice.reason.startswith(f"row {row.name!r}")
        assert choice[:2] == (row.options[0] if row.options else (row.float32, "float32"))


def test_explicit_values_are_kept_and_half_auto_resolves_the_other():
    assert resolve("onnxruntime", "float32", SAPPHIRE_RAPIDS)[:2] == ("onnxruntime", "float32")
    assert resolve("openvino", "auto", ZEN4)[:2] == ("openvino", "bfloat16")
    assert resolve("openvino", "auto", ZEN4, calibration=True)[:2] == ("openvino", "int8")
    assert resolve("openvino", "auto", SAPPHIRE_RAPIDS, calibration=True)[:2] == (
        "openvino",
        "int8",
    )
    assert resolve("onnxruntime", "auto", ZEN4, calibration=True)[:2] == ("onnxruntime", "int8")
    assert resolve("onnxruntime", "auto", ZEN4)[:2] == ("onnxruntime", "float32")  # no bf16 in ORT
    assert resolve("auto", "float32", ZEN4)[:2] == ("onnxruntime", "float32")
    assert resolve("auto", "bfloat16", HASWELL)[:2] == ("openvino", "bfloat16")


def test_bad_names_are_refused():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve("tensorflow", "auto", ZEN4)
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve("auto", "float8", ZEN4)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_this_machines_flags_are_read_from_proc_cpuinfo(monkeypatch):
    monkeypatch.delenv(FLAGS_ENV)
    flags = cpu_flags()
    assert isinstance(flags, frozenset) and "fpu" in flags
    monkeypatch.setenv(FLAGS_ENV, "avx512_bf16 avx512_vnni")
    assert cpu_flags() == {"avx512_bf16", "avx512_vnni"}
