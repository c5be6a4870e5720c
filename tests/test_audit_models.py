"""The audit beyond VGG (issue 24: it works on every model the project explains): a ResNet, whose
weights resize and crop differently from VGG's, audited through its ONNX file and through the
same graph run natively in torch give the same rows; and `gradcam-fast audit --arch` builds,
caches and audits a non-VGG model end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from gradcam_fast import GradCAMSession, export_onnx, load_model
from gradcam_fast.audit import audit
from gradcam_fast.audit.run import read_lines
from gradcam_fast.cli import EXIT_OK, main

SIZE = 64
METRICS = ("pointing", "energy", "localization", "deletion", "insertion", "drop", "road")


def _pictures(n: int = 3) -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [
        Image.fromarray(rng.integers(0, 255, (70 + 6 * i, 90, 3), dtype=np.uint8)) for i in range(n)
    ]


@pytest.fixture(scope="module")
def resnet():
    return load_model("resnet18", "random", seed=2)


def test_a_resnet_audits_the_same_through_onnx_runtime_and_torch(resnet, tmp_path):
    path = export_onnx(resnet, tmp_path / "resnet18.onnx", image_size=SIZE, validate=False)
    sessions = [
        GradCAMSession(path, device="cpu"),
        GradCAMSession.from_model(resnet, image_size=SIZE, device="cpu"),
    ]
    boxes = [[(3, 10, 12, 60, 50), (7, 30, 5, 85, 40)]] * 3
    onnx_rows, torch_rows = (
        audit(s, _pictures(), boxes=boxes, metrics=METRICS, steps=5) for s in sessions
    )
    assert len(onnx_rows) == len(torch_rows) == 6
    for a, b in zip(onnx_rows, torch_rows, strict=True):
        assert "error" not in a and (a["class"], a["path"]) == (b["class"], b["path"])
        for key in METRICS:  # None: a map with no mass (undefined), on both sides alike
            if a[key] is None or b[key] is None:
                assert a[key] is b[key] is None, (key, a[key], b[key])
                continue
            assert math.isfinite(a[key]) and math.isfinite(b[key]), (key, a, b)
            assert np.isclose(a[key], b[key], atol=0.02, rtol=0), (key, a[key], b[key])
    scored = [r for r in onnx_rows if r["energy"] is not None]
    assert len(scored) >= 3, onnx_rows  # not a vacuous comparison
    assert all(0.0 <= r["energy"] <= 1.0 and r["pointing"] in (0.0, 1.0) for r in scored)
    assert all(math.isfinite(r["deletion"]) for r in onnx_rows)


def test_the_command_audits_a_resnet_by_arch(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "images"
    folder.mkdir()
    for i, picture in enumerate(_pictures()):
        picture.save(folder / f"p{i}.png")
    ann = tmp_path / "boxes.csv"
    ann.write_text("file,class,x0,y0,x1,y1\np0.png,3,10,12,60,50\np1.png,5,0,0,40,40\n")
    out = tmp_path / "report"
    argv = ["audit", str(folder), "--annotations", str(ann), "--out", str(out), "--arch",
            "resnet18", "--weights", "random", "--image-size", str(SIZE), "--steps", "4", "-q"]  # fmt: skip
    assert main(argv) == EXIT_OK
    rows = read_lines(out / "images.jsonl")
    assert sorted((r["path"].rsplit("/", 1)[-1], r["class"]) for r in rows) == [
        ("p0.png", 3),
        ("p1.png", 5),
    ]
    assert all(math.isfinite(r["deletion"]) and 0 <= r["energy"] <= 1 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary and (out / "index.html").is_file()
