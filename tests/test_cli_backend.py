"""`--backend` / `--precision` on the command line (issue 21): auto resolved per CPU and printed,
the overrides, OpenVINO's int8 planned from the float32 export, and the options reaching
explain-dataset's actors and serve's replicas (checked without starting Ray)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import export_onnx
from gradcam_fast.cli import main
from gradcam_fast.cli.precision import precision_kwargs, session_kwargs, settled_session_kwargs
from gradcam_fast.model.loading import ModelInfo

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"
ZEN4 = "avx512f avx512_bf16 avx512_vnni"
SIZE = 32


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    model = make_tiny_vgg(num_classes=10, pool=7)
    model.gradcam_fast_info = ModelInfo(arch="vgg", weights="random:tiny")
    return export_onnx(
        model, tmp_path_factory.mktemp("m") / "tiny.onnx", image_size=SIZE, num_targets=1
    )


def _explain(tmp_path, model, capsys, *options) -> tuple[int, str, dict]:
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    status = main(["explain", str(EXAMPLES / "cat.jpg"), "--model", str(model), "--out",
                   str(out), "--device", "cpu", *options])  # fmt: skip
    err = capsys.readouterr().err
    record = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    return status, err, record


def test_explain_defaults_to_auto_and_prints_the_choice(tmp_path, tiny_model, capsys):
    status, err, _ = _explain(tmp_path, tiny_model, capsys)
    assert status == 0
    assert "backend onnxruntime, precision float32" in err  # conftest: no CPU features


def test_explain_on_openvino_gives_the_same_predictions(tmp_path, tiny_model, capsys):
    pytest.importorskip("openvino")
    _, err_ort, ort = _explain(tmp_path, tiny_model, capsys, "--backend", "onnxruntime")
    assert "backend onnxruntime, precision float32" in err_ort
    status, err, ov = _explain(
        tmp_path, tiny_model, capsys, "--backend", "openvino", "--precision", "float32"
    )
    assert status == 0 and "backend openvino, precision float32" in err
    assert [p["index"] for p in ov["predictions"]] == [p["index"] for p in ort["predictions"]]
    for a, b in zip(ov["predictions"], ort["predictions"], strict=True):
        assert abs(a["probability"] - b["probability"]) <= 1e-5


def _bf16_trial(monkeypatch, speedup: float) -> None:
    from gradcam_fast.runtime import speed_trial

    def trial(path, meta, open_session, calibration=None):
        return {"speedup": speedup, "by_batch": {1: speedup}, "failed": []}

    monkeypatch.setattr(speed_trial, "bfloat16_trial", trial)


@pytest.mark.parametrize(("speedup", "runs"), [(2.0, "bfloat16"), (0.8, "float32")])
def test_auto_on_a_zen4_cpu_takes_openvino_bfloat16_where_it_pays(
    tmp_path, tiny_model, capsys, monkeypatch, speedup, runs
):
    """Zen 4's row tries OpenVINO bf16 first (no calibration); the session keeps it only where
    its trial on this model found it faster (speed_trial.py), and the line says what ran."""
    pytest.importorskip("openvino")
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", ZEN4)
    _bf16_trial(monkeypatch, speedup)
    status, err, record = _explain(tmp_path, tiny_model, capsys)
    assert status == 0 and "error" not in record
    if runs == "bfloat16":
        assert "backend openvino, precision bfloat16" in err and "lossy" in err
    else:
        assert "backend onnxruntime, precision float32" in err and "lossy" not in err


def _args(**given) -> argparse.Namespace:
    defaults = {"model": None, "device": "cpu", "backend": "auto", "precision": "auto",
                "calibration": None, "calibration_method": "minmax"}  # fmt: skip
    return argparse.Namespace(**(defaults | given))


def test_sessions_resolve_auto_and_make_int8_from_the_float32_export(monkeypatch):
    photos = Path("photos")
    int8 = {"calibration": photos, "calibration_method": "minmax"}
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", ZEN4)
    args = _args(calibration=photos, backend="openvino")
    assert precision_kwargs(args) == {}  # the float32 export: the session makes int8 from it
    assert session_kwargs(args) == {"backend": "openvino", "precision": "auto", **int8}
    args = _args(calibration=photos, precision="int8", backend="onnxruntime")
    assert precision_kwargs(args) == {}
    assert session_kwargs(args) == {"backend": "onnxruntime", "precision": "int8", **int8}
    assert session_kwargs(_args()) == {"backend": "auto", "precision": "auto"}
    assert session_kwargs(_args(model=Path("m.onnx"))) == {"backend": "auto", "precision": "auto"}
    on_gpu = session_kwargs(_args(device="cuda"))  # the CLI decides: the CUDA provider
    assert on_gpu == {"backend": "onnxruntime", "precision": "float32"}


def test_actors_get_auto_settled_once_with_the_int8_model_made(tmp_path, monkeypatch):
    """explain-dataset and serve settle auto in the driver: the actors open the same choice,
    int8 with its calibration (found in the cache), or float32 where int8 does not pay."""
    from gradcam_fast.runtime import int8_cache

    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", "avx512_vnni")  # ONNX Runtime int8, then float32
    model = export_onnx(make_tiny_vgg(), tmp_path / "m.onnx", image_size=SIZE, validate=False)
    photos = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    args = _args(calibration=photos)
    monkeypatch.setattr(int8_cache, "measured_speedups", lambda path: {"1": 2.0, "8": 2.0})
    settled, line = settled_session_kwargs(args, model)
    assert settled == {"backend": "onnxruntime", "precision": "int8", "calibration": photos,
                       "calibration_method": "minmax"}  # fmt: skip
    assert "backend onnxruntime, precision int8" in line and "lossy" in line
    monkeypatch.setattr(int8_cache, "measured_speedups", lambda path: {"1": 0.5, "8": 0.5})
    with pytest.warns(RuntimeWarning, match="auto passes over onnxruntime int8"):
        settled, line = settled_session_kwargs(args, model)
    assert settled == {"backend": "onnxruntime", "precision": "float32"}
    given = _args(backend="onnxruntime", precision="float32")
    assert settled_session_kwargs(given, model)[0] == {"backend": "onnxruntime",
                                                       "precision": "float32"}  # fmt: skip


def test_calibration_with_float32_is_refused():
    with pytest.raises(ValueError, match="--calibration is for int8"):
        precision_kwargs(_args(precision="float32", calibration=Path("photos")))


def test_options_reach_serve_replicas(tiny_model):
    pytest.importorskip("ray.serve")
    pytest.importorskip("openvino")
    from gradcam_fast.services.ray_serve import GradCAMDeployment, app

    options = {"backend": "openvino", "precision": "float32"}
    bound = app(str(tiny_model), session_options=options)._bound_deployment
    assert bound.init_kwargs["session_options"] == options
    replica = GradCAMDeployment.func_or_class(
        str(tiny_model), device="cpu", session_options=options
    )
    assert (replica.session.backend, replica.session.precision) == ("openvino", "float32")


def test_options_reach_explain_dataset_actors(tiny_model, monkeypatch):
    pytest.importorskip("ray.data")
    pytest.importorskip("openvino")
    import ray.data

    from gradcam_fast.services import ray_data

    captured = {}

    class Files:
        def map_batches(self, fn, **kwargs):
            captured.update(kwargs["fn_constructor_kwargs"], fn=fn)
            return "dataset"

    monkeypatch.setattr(ray.data, "read_binary_files", lambda *a, **k: Files())
    monkeypatch.setattr(ray_data, "_ship_model", lambda path: None)
    options = {"backend": "openvino", "precision": "float32"}
    assert ray_data.explain_dataset(["x.jpg"], tiny_model, session_options=options) == ("dataset")
    assert captured["session_options"] == options
    predictor = captured["fn"](str(tiny_model), session_options=options)
    assert predictor.session.backend == "openvino"
    x = torch.randn(2, 3, SIZE, SIZE)
    assert torch.isfinite(predictor.session(x).cams).all()


def test_explain_dataset_command_passes_the_choice_to_the_actors(
    tmp_path, tiny_model, monkeypatch, capsys
):
    pytest.importorskip("ray.data")
    pytest.importorskip("openvino")
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from gradcam_fast.services import ray_data

    captured = {}

    class Written:
        def write_parquet(self, out, **kwargs):
            Path(out).mkdir(parents=True)
            pq.write_table(pa.table({"error": pa.array([], pa.string())}), f"{out}/0.parquet")

    def fake(source, model_path, **kwargs):
        captured.update(kwargs)
        return Written()

    monkeypatch.setattr(ray_data, "explain_dataset", fake)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # no Ray started
    status = main(["explain-dataset", str(EXAMPLES), "--out", str(tmp_path / "o"), "--model",
                   str(tiny_model), "--device", "cpu", "--backend", "openvino",
                   "--precision", "bfloat16"])  # fmt: skip
    assert status == 0, capsys.readouterr().err
    assert captured["session_options"] == {"backend": "openvino", "precision": "bfloat16"}
    assert "backend openvino, precision bfloat16" in capsys.readouterr().err
