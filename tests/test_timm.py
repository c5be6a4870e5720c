"""timm CNNs (issue 22: any nn.Module classifier that fx traces, "a timm CNN if timm installs"):
timm's own layers trace to ops the registry covers. Each model is swept like torchvision's (default target, inside the last
stage, the stage before) against the eager reference, and one runs end to end through ONNX
Runtime. Skipped without timm (`pip install -e ".[timm]"`)."""

from __future__ import annotations

import pytest
import torch

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx
from gradcam_fast.check.compare import compare_with_reference, failing_figures
from gradcam_fast.check.sweep import sweep_model

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.slow

SIZE = 64
# what timm adds to torchvision's kinds: MobileNet-V3 (timm's BatchNormAct2d and Linear are
# subclasses the trace enters: F.batch_norm and F.linear), GhostNet (a slice of a cat, F.dropout
# in its head), ConvNeXt (timm's LayerNorm2d)
MODELS = ("mobilenetv3_small_100", "ghostnet_100", "convnext_atto")


def _timm(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval()


@pytest.mark.parametrize("name", MODELS)
def test_timm_models_match_the_eager_reference_at_three_depths(name):
    rows = sweep_model(_timm(name), image_size=SIZE)
    assert {r.kind for r in rows} == {"default", "inside", "earlier"}, rows
    bad = [(r.kind, r.target, r.error, r.note) for r in rows if not r.ok]
    assert not bad, bad


def test_a_timm_model_runs_through_onnx_runtime(tmp_path):
    model = _timm("mobilenetv3_small_100")
    path = export_onnx(model, tmp_path / "m.onnx", image_size=SIZE, num_targets=2, validate=False)
    session = GradCAMSession(path, device="cpu")
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    got = session(x)
    ref = eager_gradcam(model, x, got.target_classes, session.metadata.target_layer)
    errors = compare_with_reference(got, ref)
    assert not failing_figures(errors, "float32"), errors
