"""The GPU check's machinery, run without a GPU in a few seconds: rows on disk as soon as they
are measured, a crashing contender recorded and passed, the time budget, the table's ratios, a
whole dry run of the real plan, and the float32 rows' own factories run on the CPU (their check,
`verdict`, is tested with check_output's in test_report.py)."""

from __future__ import annotations

import json

from benchmarks import gpu_check
from benchmarks.contenders import ContenderSpec
from benchmarks.gpu_check import BATCHES, Recorder, Row, render_markdown


def _rows(name, precision="float16", ms=(1.0, 2.0, 10.0), check="ok"):
    return [Row(name, precision, b, t, check) for b, t in zip(BATCHES, ms, strict=True)]


def _jsonl(out):
    return [json.loads(line) for line in (out / "gpu_check.jsonl").read_text().splitlines()]


def test_rows_reach_the_disk_as_each_contender_finishes_and_a_crash_is_passed(tmp_path):
    recorder = Recorder(tmp_path, {"device": "test"})
    seen_on_disk = {}

    def measure(c):
        if c.name == "crashes":
            raise ValueError("CUDA error: an illegal memory access")
        if c.name == "second":  # the first one's rows must already be in both files
            seen_on_disk["jsonl"] = [r["row"]["contender"] for r in _jsonl(tmp_path) if "row" in r]
            seen_on_disk["md"] = (tmp_path / "gpu_check.md").read_text()
        return _rows(c.name)

    contenders = [ContenderSpec(n, None, "float16") for n in ("first", "crashes", "second")]
    gpu_check.run_contenders(contenders, measure, recorder, budget_s=1e9)
    recorder.close()
    assert seen_on_disk["jsonl"] == ["first"] * 3 + ["crashes"] * 3
    assert "| first | float16 | 64 | 10.00 |" in seen_on_disk["md"]
    checks = {(r.contender, r.batch): r.check for r in recorder.rows}
    assert checks[("crashes", 8)] == "error: ValueError: CUDA error: an illegal memory access"
    assert checks[("second", 64)] == "ok"
    phases = [r["phase"] for r in _jsonl(tmp_path) if "phase" in r]
    assert phases == ["first", "crashes", "second"]
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert len(saved["rows"]) == 9 and saved["device"] == "test"


def test_contenders_past_the_budget_are_recorded_as_skipped(tmp_path):
    clock = iter(range(0, 1000, 10))  # each reading 10 s later
    now = lambda: float(next(clock))  # noqa: E731
    recorder = Recorder(tmp_path, {}, started=0.0)
    measured = []

    def measure(c):
        measured.append(c.name)
        return _rows(c.name)

    contenders = [ContenderSpec(f"c{i}", None) for i in range(5)]
    # starts read at 0, 20, 40, ...: c0 and c1 start within 25 s, the rest do not
    gpu_check.run_contenders(contenders, measure, recorder, budget_s=25, now=now)
    assert measured == ["c0", "c1"]
    skipped = [r for r in recorder.rows if r.check.startswith("skipped: budget")]
    assert {r.contender for r in skipped} == {"c2", "c3", "c4"} and len(skipped) == 9
    assert all(r.ms is None for r in skipped)


def test_the_table_has_the_h100_layout_and_ratios_from_the_same_run():
    rows = [
        *_rows(gpu_check.FLOOR, "float16", (1.0, 2.0, 10.0), "-"),
        *_rows(gpu_check.EAGER_FP32, "float32", (8.0, 30.0, 120.0)),
        *_rows("onnxruntime CUDA fp16", "float16", (1.1, 2.2, 11.0)),
        *_rows("broken", "float16", (None, float("nan"), None), "error: x | y"),
    ]
    text = render_markdown(rows, {"device": "NVIDIA H200", "torch": "2.11", "date": "2026-12-01"})
    assert text.startswith("# gpu_check on NVIDIA H200, torch 2.11, 2026-12-01")
    assert gpu_check.TABLE_HEAD in text
    assert "| onnxruntime CUDA fp16 | float16 | 8 | 2.20 | 3,636 | 13.64x | 1.10 | ok |" in text
    assert "| plain forward (floor) | float16 | 64 | 10.00 | 6,400 | 12.00x | 1.00 | - |" in text
    assert "| broken | float16 | 8 | - | - | - | - | error: x / y |" in text


def test_dry_run_writes_the_whole_plan(tmp_path):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    by_name = {}
    for row in saved["rows"]:
        by_name.setdefault(row["contender"], []).append(row)
    required = [gpu_check.FLOOR, gpu_check.EAGER_FP32, "eager hook fp16 (autocast)"]
    required += [f"torch backend {p} + CUDA graphs" for p in ("fp16", "fp32")]
    required += [
        f"onnxruntime CUDA {p}{g}" for p in ("fp32", "fp16") for g in ("", " + CUDA graphs")
    ]
    for name in required:
        assert {r["batch"] for r in by_name[name]} == set(BATCHES), name
    assert all(r["check"] == "ok" for r in by_name["onnxruntime CUDA fp32 + CUDA graphs"])
    # the simulated float16 export failure costs its rows only; TensorRT is skipped, not failed
    fp16 = by_name["onnxruntime CUDA fp16"][0]["check"]
    assert fp16.startswith("error: RuntimeError: the float16")
    assert by_name["onnxruntime TensorRT fp16"][0]["check"].startswith("skipped: TensorRT")
    assert len(_jsonl(tmp_path)) > len(saved["rows"])  # rows and phases
    assert "| onnxruntime CUDA fp32 | float32 | 1 |" in (tmp_path / "gpu_check.md").read_text()


def test_each_precision_is_exported_on_its_own_and_reused(tmp_path, monkeypatch):
    import gradcam_fast

    made = []

    def fake_export(model, path, *, image_size, precision, validate):
        made.append(precision == "float16")
        if precision == "float16":
            raise ModuleNotFoundError("No module named 'onnxruntime.transformers'")
        path.write_bytes(b"onnx")

    monkeypatch.setattr(gradcam_fast, "export_onnx", fake_export, raising=False)
    recorder = Recorder(tmp_path / "out", {})
    exports = gpu_check.export_each(None, tmp_path / "models", recorder)
    assert exports["float32"] == tmp_path / "models" / "float32.onnx"
    assert isinstance(exports["float16"], ModuleNotFoundError)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["float32.onnx"]
    again = gpu_check.export_each(None, tmp_path / "models", recorder)
    assert made == [False, True, True] and again["float32"] == exports["float32"]
    results = [r["result"] for r in recorder.phases]
    assert results[0] == "exported" and results[2] == "reused" and "FAILED" in results[1]


def test_a_cuda_test_run_past_its_time_is_stopped_and_reported(tmp_path):
    summary = gpu_check.run_cuda_tests(tmp_path, timeout_s=0.2, exports=tmp_path)
    assert summary.startswith("TIMEOUT: stopped after 0 s")
    assert (tmp_path / "cuda_tests.log").exists()


def test_the_float32_gpu_rows_run_and_pass_their_check_on_the_cpu(tmp_path):
    """The GPU registry's own factories, on a CPU `Setup` with a tiny VGG: each float32 row
    without CUDA graphs builds, runs, and passes `verdict` against the eager reference (the
    floor: the model's logits). What the GPU machine runs first is then known to be wired."""
    import torch

    from benchmarks.contenders import Setup, gpu_plan
    from gradcam_fast import eager_gradcam, export_onnx
    from gradcam_fast.model.loading import default_target_layer
    from gradcam_fast.testing import make_tiny_vgg

    model = make_tiny_vgg(seed=0).eval()
    path = export_onnx(model, tmp_path / "m.onnx", image_size=32, validate=False)
    failed = RuntimeError("no float16 export in this test")
    paths = {"float32": path, "float16": failed}
    setup = Setup(model, default_target_layer(model), 32, paths, "cpu", {"tensorrt": "none"})
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reference = eager_gradcam(model, x, None)
    rows = [c for c in gpu_plan(quick=False) if c.precision == "float32"]
    rows = [c for c in rows if "graphs" not in c.name]
    assert {c.name for c in rows} >= {
        gpu_check.FLOOR,
        gpu_check.EAGER_FP32,
        "onnxruntime CUDA fp32",
        "torch backend fp32",
    }
    for c in rows:
        contender = c.factory(setup)
        out = contender.run(x, reference.target_classes)
        if c.floor:
            assert torch.allclose(out.float(), reference.logits, rtol=1e-4, atol=1e-5), c.name
        else:
            check, errors = gpu_check.verdict(contender.output(out), reference, c.precision)
            assert check == "ok", (c.name, errors)
