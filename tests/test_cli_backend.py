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
from gradcam_fast.cli.precision import precision_kwargs, session_kwargs
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


def test_auto_on_a_zen4_cpu_picks_openvino_bfloat16_and_says_it_is_lossy(
    tmp_path, tiny_model, capsys, monkeypatch
):
    pytest.importorskip("openvino")
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", ZEN4)
    status, err, record = _explain(tmp_path, tiny_model, capsys)
    assert status == 0 and "error" not in record
    assert "backend openvino, precision bfloat16" in err and "lossy" in err


def _args(**given) -> argparse.Namespace:
    defaults = {"model": None, "device": "cpu", "backend": "auto", "precision": "auto",
                "calibration": None, "calibration_method": "minmax"}  # fmt: skip
    return argparse.Namespace(**(defaults | given))


def test_plan_int8_per_backend(monkeypatch):
    pytest.importorskip("openvino")
    photos = Path("photos")
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", ZEN4)
    args = _args(calibration=photos, backend="openvino")
    assert precision_kwargs(args) == {}  # OpenVINO: the float32 export, int8 made from it
    assert session_kwargs(args) == {"backend": "openvino", "precision": "int8",
                                    "calibration": photos}  # fmt: skip
    args = _args(calibration=photos)  # auto on Zen 4: ONNX Runtime's int8 (measured faster)
    assert precision_kwargs(args)["precision"] == "int8"  # ONNX Runtime's int8 export
    assert session_kwargs(args) == {"backend": "onnxruntime"}
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", "")
    args = _args()
    assert (precision_kwargs(args), session_kwargs(args)) == (
        {},
        {"backend": "onnxruntime", "precision": "float32"},
    )
    with_model = _args(model=Path("m.onnx"))  # the session resolves auto from the file
    assert session_kwargs(with_model) == {"backend": "auto", "precision": "auto"}


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
