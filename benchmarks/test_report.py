"""Tests of the suite's own machinery: the correctness gate, the report's arithmetic, the memory
probe. Cheap (tiny model), no timing."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.checks import check_output
from benchmarks.contenders import exposed as Output
from benchmarks.gpu_check import verdict
from benchmarks.report import last_json_line
from benchmarks.report_summary import evaluate_targets, render_markdown, splice, summarize
from benchmarks.timing import interleave, round_robin_ratios
from gradcam_fast.cams.postprocess import upsample_normalize
from gradcam_fast.format.result import GradCAMResult


def _bench(name, group, median_s, **extra):
    stats = {"median": median_s, "min": median_s * 0.9, "max": median_s * 1.1, "rounds": 3}
    return {"name": name, "group": group, "stats": stats, "extra_info": extra}


def _suite_json():
    def contender(name, batch, ms, k=1, group=None):
        return _bench(f"test_contender[b{batch}-{name}]", group or f"batch {batch}", ms / 1e3,
                      contender=name, label=name, batch=batch, k=k, errors={"cams": 1e-6})  # fmt: skip

    return {
        "benchmarks": [
            contender("eager_hook", 8, 1000.0),
            contender("eager_autograd", 8, 400.0),
            contender("captum", 8, 500.0),
            contender("gradcam_fast", 8, 200.0),
            contender("floor_ort", 8, 190.0),
            contender("gradcam_fast", 8, 200.0, group="K, batch 8"),
            contender("gradcam_fast_k5", 8, 230.0, k=5, group="K, batch 8"),
            _bench("test_postprocess", "post-processing", 0.002, stage="postprocess", batch=8),
            _bench("test_export", "export", 10.0, stage="export", validate_s=3.0, size_bytes=2**20),
            _bench("test_explain_cli", "explain", 0.5),
        ]
    }


def test_summarize_computes_ratios_within_the_batch():
    summary = summarize(_suite_json())
    rows = {r["contender"]: r for r in summary["contenders"]}
    assert rows["gradcam_fast"]["speedup_vs_eager"] == pytest.approx(5.0)
    assert rows["gradcam_fast"]["ratio_to_floor"] == pytest.approx(200 / 190)
    assert rows["gradcam_fast"]["images_per_s"] == pytest.approx(40.0)
    k5 = next(r for r in summary["k"] if r["k"] == 5)
    assert k5["ratio_to_k1"] == pytest.approx(1.15)
    assert [r["name"] for r in summary["others"]] == ["test_explain_cli"]


def test_targets_say_which_are_met():
    summary = summarize(_suite_json())
    memory = [{"contender": "gradcam_fast", "batch": 8, "peak_mib": 1000.0, "imports_mib": 1.0}]
    met = {t["target"]: t["met"] for t in evaluate_targets(summary, memory, weights_mib=500.0)}
    assert met["speedup over the eager hook, batch 8 (>= 4x)"] is True
    assert met["ratio to the ORT floor, batch 8 (<= 1.05x)"] is False  # 1.053
    assert met["speedup over the fastest of 2 and 3 (eager_autograd), batch 8 (>= 2x)"] is True
    assert met["K=5 / K=1, batch 8 (<= 1.10x)"] is False
    assert met["post-processing / session call, batch 8 (<= 2%)"] is True  # 1%
    assert met["peak RSS of a session process at batch 8 / weights (<= 1.3x)"] is False  # 2x


def test_markdown_has_every_section_and_the_machine_json():
    summary = summarize(_suite_json())
    machine = {"date_utc": "d", "load_average": [0.1, 0.2, 0.3], "profile": "tiny", "cores": 2}
    text = render_markdown(summary, [], evaluate_targets(summary, [], 1.0), machine, 1.0, "cmd")
    for heading in (
        "### Batch 8",
        "### K target",
        "### Export",
        "### Targets",
        "### Other",
        "```json",
    ):
        assert heading in text
    assert "| 5.00x |" in text  # the session's speedup over the eager hook
    assert json.loads(text.split("```json\n")[1].split("```")[0]) == machine


def test_splice_keeps_the_text_around_the_markers():
    first = splice("# Results\n\nanalysis\n", "table 1")
    assert first.startswith("# Results\n\nanalysis\n") and "table 1" in first
    second = splice(first + "\nmore analysis\n", "table 2")
    assert "table 1" not in second and "table 2" in second and second.endswith("more analysis\n")


def _reference(batch=2, size=8):
    gen = torch.Generator().manual_seed(0)
    lowres = torch.rand(batch, 1, 2, 2, generator=gen)
    cams = upsample_normalize(lowres, size)
    classes = torch.tensor([[3], [1]])
    logits = torch.randn(batch, 5, generator=gen)
    activations = torch.rand(batch, 3, 2, 2, generator=gen)
    gradients = torch.randn(batch, 1, 3, 2, 2, generator=gen)
    return GradCAMResult(cams, lowres, classes, logits, activations, gradients)


def test_check_passes_the_right_answer_and_fails_a_wrong_one():
    ref = _reference()
    assert check_output("gradcam_fast", Output(ref.cams, ref.cams_lowres, ref.target_classes), ref)
    assert verdict(ref, ref, "float32")[0] == "ok"  # gpu_check's: the same check
    with pytest.raises(AssertionError, match="gradcam_fast: maps differ"):
        check_output("gradcam_fast", Output(ref.cams, ref.cams_lowres * 1.01), ref)
    with pytest.raises(AssertionError, match="maps differ"):
        check_output("pytorch_grad_cam", Output(cams=ref.cams.flip(-1)), ref)
    with pytest.raises(AssertionError, match="explained classes"):
        check_output("captum", Output(ref.cams, classes=ref.target_classes + 1), ref)
    with pytest.raises(AssertionError, match="logits differ"):
        check_output("floor_ort", Output(logits=ref.logits + 1), ref)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("field", ["cams", "cams_lowres", "logits", "gradients"])
def test_check_fails_non_finite_outputs_naming_them(field, value):
    """NaN compares False with every tolerance: a NaN or Inf anywhere must still fail, with the
    output named and the count of such values, even when everything else is right, for a map
    contender, one exposing some outputs, a floor, and gpu_check at every precision."""
    ref = _reference()
    got = GradCAMResult(**{k: v if v is None else v.clone() for k, v in vars(ref).items()})
    getattr(got, field).view(-1)[1:3] = value
    for name in ("gradcam_fast", "captum", "floor_ort"):
        with pytest.raises(AssertionError, match=rf"{name}: {field} holds 2 non-finite values"):
            check_output(name, got, ref)
    for precision in ("float32", "tf32", "float16"):
        assert verdict(got, ref, precision)[0].startswith("WRONG"), precision


def _probe(module, profile, setup, *args):
    """The last stdout line of `python -m module *args` on the suite's exports, as JSON."""
    models = str(setup.paths["gradcam_k1"].parent)
    figures = last_json_line(module, module, *args, "--models", models, "--profile", profile.name)
    assert figures is not None, f"{module} failed (its last line is above)"
    return figures


def test_memory_probe_reports_rss_in_its_own_process(profile, setup):
    figures = _probe("benchmarks.memory", profile, setup, "gradcam_fast")
    assert figures["contender"] == "gradcam_fast" and figures["batch"] == 8
    assert 0 < figures["imports_mib"] <= figures["peak_mib"]
    assert figures["after_run_mib"] <= figures["peak_mib"]


def test_kernel_times_sums_kernel_events_by_node(tmp_path):
    from benchmarks.profile_ort import kernel_times

    events = [
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 10, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 5, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_fence_before", "dur": 99, "args": {"op_name": "Conv"}},
        {"cat": "Session", "name": "model_run", "dur": 1000},
        {"cat": "Node", "name": "mm_kernel_time", "dur": 7, "args": {"op_name": "MatMul"}},
    ]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(events))
    assert kernel_times(path) == {("conv1", "Conv"): 15, ("mm", "MatMul"): 7}


def test_interleave_visits_each_once_a_round_in_shuffled_orders():
    order = []
    calls = {name: (lambda n=name: order.append(n)) for name in "abcd"}
    times = interleave(calls, rounds=6, warm=1)
    assert {name: len(ts) for name, ts in times.items()} == dict.fromkeys("abcd", 6)
    visits = order[::2]
    assert order[1::2] == visits  # a visit: one warm call, then the timed one of the same
    rounds = ["".join(visits[i : i + 4]) for i in range(0, 24, 4)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len(set(rounds)) > 1  # not one fixed order
    followers = {r[r.index("d") + 1] for r in rounds if r[-1] != "d"}
    assert len(followers) > 1  # "a" does not always come right after "d", say


def test_round_robin_ratios_are_medians_of_ratios_within_rounds():
    # the machine slows down 3x in round 2: ratios within rounds do not see it
    times = {"gradcam_fast": [1.05, 3.15, 1.05], "floor_ort": [1.0, 3.0, 1.0]}
    times["eager_hook"] = [4.2, 12.6, 4.2]
    rows = round_robin_ratios(times)
    assert rows["gradcam_fast"]["ratio_to_floor"] == pytest.approx(1.05)
    assert rows["gradcam_fast"]["speedup_vs_eager"] == pytest.approx(4.0)
    assert rows["gradcam_fast"]["median_ms"] == pytest.approx(1050.0)
    assert rows["floor_ort"]["ratio_to_floor"] == pytest.approx(1.0)


def test_targets_take_the_interleaved_ratios_when_there():
    row = {"median_ms": 204.0, "rounds": 5, "ratio_to_floor": 1.02, "speedup_vs_eager": 3.5}
    interleaved = {"8": {"gradcam_fast": row}}
    summary = summarize(_suite_json(), interleaved)
    met = {t["target"]: t for t in evaluate_targets(summary, [], weights_mib=500.0)}
    ratio = met["ratio to the ORT floor, batch 8 (<= 1.05x), interleaved"]
    assert ratio["met"] is True and ratio["figure"] == "1.020x"  # not the suite's 1.053
    assert met["speedup over the eager hook, batch 8 (>= 4x), interleaved"]["met"] is False
    machine = {"date_utc": "d", "load_average": [0.1, 0.2, 0.3], "profile": "tiny"}
    text = render_markdown(summary, [], [], machine, 1.0, "cmd")
    assert "### Interleaved rounds" in text and "| 8 | gradcam_fast |" in text


@pytest.mark.slow
def test_interleaved_rounds_run_checked_contenders(profile, setup):
    batches = _probe("benchmarks.interleaved", profile, setup)["batches"]
    assert set(batches) == {str(b) for b in profile.batches}
    for rows in batches.values():
        assert set(rows) == {"gradcam_fast", "gradcam_fast_cw", "gradcam_fast_int8", "torch_float32",
                             "torch_bfloat16", "floor_ort", "eager_hook"}  # fmt: skip
        assert rows["floor_ort"]["ratio_to_floor"] == 1.0
        assert all(r["median_ms"] > 0 and r["speedup_vs_eager"] > 0 for r in rows.values())
