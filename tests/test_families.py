"""Every torchvision CNN family beyond VGG: the graph against the eager reference (autograd; in
torch, at the default target, inside the last stage's blocks and at the stage before), the export
through ONNX Runtime at each family's default target, the other model kinds (channel weights,
maps, float16, int8) on a ResNet, a caller's own classifier, and the refusals. Random weights,
small images where the size does not matter; `gradcam-fast sweep` runs all 68 at full size."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx
from gradcam_fast.check.compare import compare_with_reference, failing_figures
from gradcam_fast.check.sweep import sweep_model
from gradcam_fast.core.graph import GradCAMGraph, UnsupportedOpError
from gradcam_fast.model.loading import load_model
from gradcam_fast.model.trace import UntraceableModelError

# One model per family, at an image size its stages all fit (Inception v3 needs 75 px).
FAMILIES = {
    "resnet": ("resnet18", 64),
    "resnext": ("resnext50_32x4d", 64),
    "wide_resnet": ("wide_resnet50_2", 64),
    "densenet": ("densenet121", 64),
    "mobilenet_v2": ("mobilenet_v2", 64),
    "mobilenet_v3": ("mobilenet_v3_small", 64),
    "efficientnet": ("efficientnet_b0", 64),
    "efficientnet_v2": ("efficientnet_v2_s", 64),
    "regnet": ("regnet_y_400mf", 64),
    "convnext": ("convnext_tiny", 64),
    "shufflenet": ("shufflenet_v2_x0_5", 64),
    "squeezenet": ("squeezenet1_1", 64),
    "googlenet": ("googlenet", 64),
    "inception": ("inception_v3", 96),
    "mnasnet": ("mnasnet0_5", 64),
    "alexnet": ("alexnet", 64),
    "vgg": ("vgg11_bn", 64),
}


def _model(arch: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_model(arch, "random", seed=0)


def _inputs(size: int, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(batch, 3, size, size, generator=gen), torch.tensor([[-1, 3], [-2, -1]])


# Families whose heads add nothing to the three-target check of a sibling (same ops as resnet,
# efficientnet, mobilenet_v3): their default target is checked through ONNX Runtime below, and
# `gradcam-fast sweep` checks all three targets of every arch (docs/models.md).
SAME_OPS_AS_A_SIBLING = {"resnext", "wide_resnet", "efficientnet_v2", "mobilenet_v2"}


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in SAME_OPS_AS_A_SIBLING])
def test_graph_matches_the_eager_reference_at_three_targets(family):
    """Default, inside the last stage's blocks, and the stage before: 1e-4 in float32."""
    arch, size = FAMILIES[family]
    rows = sweep_model(arch, size)
    assert {r.kind for r in rows} == {"default", "inside", "earlier"}, rows
    for row in rows:
        assert row.ok and row.error < 1e-4, row


@pytest.mark.slow
@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_runs_in_onnx_runtime_like_the_eager_reference(family, tmp_path):
    """The exported file (validated against the eager reference at batch 3 on export) at batch 2
    with ranks and class indices mixed, in ONNX Runtime on the CPU."""
    arch, size = FAMILIES[family]
    model = _model(arch)
    path = export_onnx(model, tmp_path / f"{arch}.onnx", image_size=size, num_targets=2)
    session = GradCAMSession(path, device="cpu")
    assert session.metadata.arch == arch
    images, targets = _inputs(size)
    got = session(images, targets)
    ref = eager_gradcam(model, images, targets, session.metadata.target_layer)
    errors = compare_with_reference(got, ref)
    assert not failing_figures(errors), errors
    assert torch.equal(got.target_classes, ref.target_classes)


def test_a_frozen_densenet_at_the_output_of_features_matches_the_eager_reference():
    """Frozen weights (requires_grad False) and a target followed by an in-place op (DenseNet's
    F.relu(features, inplace=True)): the eager reference's tap must not hand that op a leaf
    tensor."""
    model = _model("densenet121").requires_grad_(False)
    graph = GradCAMGraph(model, "features", 2, image_size=64)
    images, targets = _inputs(64)
    with torch.no_grad():
        _, classes, activations, gradients = graph(images, targets)
    ref = eager_gradcam(model, images, targets, "features")
    assert torch.equal(classes, ref.target_classes)
    torch.testing.assert_close(activations, ref.activations, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gradients, ref.gradients, rtol=1e-4, atol=1e-9)


def test_a_bfloat16_body_converts_parameters_outside_leaf_modules():
    """ConvNeXt's layer scale is a parameter of its block, read by a get_attr node: the torch
    backend's bfloat16 body converts it too (else the next conv gets float32 inputs), and the
    maps keep their shape (LIMITS["bfloat16"])."""
    model = _model("convnext_tiny")
    images, targets = _inputs(64)
    f32 = GradCAMSession.from_model(model, image_size=64, num_targets=2, device="cpu")(
        images, targets
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "slow without AVX512-BF16"
        session = GradCAMSession.from_model(
            model, image_size=64, num_targets=2, device="cpu", precision="bfloat16"
        )
    got = session(images, f32.target_classes)
    errors = compare_with_reference(got, f32)
    assert failing_figures(errors, "bfloat16") == [], errors


def test_resnet_default_target_is_layer4_and_its_channel_weights_skip_the_fc_vjp():
    """Only pooling lies between layer4 and fc: the channel weights are fc's rows / (h*w)."""
    model = _model("resnet18")
    graph = GradCAMGraph(model, "layer4", 2, channel_weights_only=True, image_size=64)
    assert graph.target_layer == "layer4.1.relu_1"
    assert graph.first_linear == "fc"
    images, targets = _inputs(64)
    with torch.no_grad():
        _, classes, _, weights = graph(images, targets)
    ref = eager_gradcam(model, images, targets, "layer4")
    torch.testing.assert_close(weights, ref.gradients.mean((-2, -1)), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weights, model.fc.weight[classes] / 4, rtol=1e-6, atol=1e-8)


def test_channel_weights_without_the_shortcut_are_the_gradients_means():
    """ConvNeXt's classifier normalizes after pooling: no shortcut, the full backward's mean."""
    model = _model("convnext_tiny")
    graph = GradCAMGraph(model, None, 2, channel_weights_only=True, image_size=64)
    assert graph.first_linear is None
    images, targets = _inputs(64)
    with torch.no_grad():
        weights = graph(images, targets)[3]
    ref = eager_gradcam(model, images, targets, graph.target_layer)
    torch.testing.assert_close(weights, ref.gradients.mean((-2, -1)), rtol=1e-4, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        {"channel_weights_only": True},
        {"maps": True, "method": "gradcam++"},
        {"precision": "float16"},
        {"raw_pixels": True},
    ],
    ids=["channel-weights", "maps", "float16", "raw-pixels"],
)
def test_other_model_kinds_export_for_a_resnet(kind, tmp_path):
    """Each kind validates against the eager reference on export (float16 with looser limits)."""
    path = export_onnx(_model("resnet18"), tmp_path / "r.onnx", image_size=64, **kind)
    meta = GradCAMSession(path, device="cpu").metadata
    assert meta.arch == "resnet18"
    assert meta.target_layer == "layer4.1.relu_1"


@pytest.mark.slow
def test_int8_resnet_keeps_the_maps(tmp_path):
    """The int8 body (static quantization) on a ResNet: validated by map correlation."""
    calibration = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    path = export_onnx(
        _model("resnet18"), tmp_path / "q.onnx", image_size=64, precision="int8",
        calibration=calibration, channel_weights_only=True,
    )  # fmt: skip
    session = GradCAMSession(path, device="cpu")
    assert session.metadata.precision == "int8"
    images, _ = _inputs(64)
    assert session(images).cams.shape == (2, 1, 64, 64)


@pytest.mark.slow
def test_a_fine_tuned_resnet_with_a_new_head_exports(tmp_path):
    """A caller's own classifier: a ResNet whose fc was replaced for 7 classes."""
    model = _model("resnet18")
    model.fc = nn.Linear(512, 7)
    del model.gradcam_fast_info  # no longer ImageNet's classifier
    path = export_onnx(model, tmp_path / "ft.onnx", image_size=64)
    meta = GradCAMSession(path, device="cpu").metadata
    assert (meta.arch, meta.num_classes, meta.categories) == ("resnet", 7, ())


class _Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = -x
        return self.fc(x.mean((2, 3)))


class _NoClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x)


class _PReLUHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.PReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def test_untraceable_model_names_fx_reason_and_the_remedy():
    with pytest.raises(UntraceableModelError, match=r"cannot trace _Branchy.*Remedies"):
        GradCAMGraph(_Branchy(), image_size=16)


def test_model_without_a_classifier_output_is_refused():
    with pytest.raises(
        ValueError, match=r"output has shape \(2, 4, 14, 14\), not \[B, num_classes\]"
    ):
        GradCAMGraph(_NoClassifier(), image_size=16)


def test_op_without_a_vjp_rule_is_refused_naming_op_and_node():
    with pytest.raises(UnsupportedOpError, match=r"PReLU at node 'act'.*no VJP rule.*Supported"):
        GradCAMGraph(_PReLUHead(), "conv", image_size=16)
    # after the op, nothing unsupported lies between target and logits: accepted
    assert GradCAMGraph(_PReLUHead(), "act", image_size=16).target_layer == "act"


def test_module_name_targets_its_last_node_and_twice_called_modules_are_distinct():
    model = _model("resnet18")
    assert GradCAMGraph(model, "layer4.1", image_size=64).target_layer == "layer4.1.relu_1"
    images, targets = _inputs(64)
    for layer in ("layer4.1.relu", "layer4.1.relu_1", "layer4.1.add"):  # one module, two calls
        graph = GradCAMGraph(model, layer, 2, image_size=64)
        with torch.no_grad():
            got = graph(images, targets)
        ref = eager_gradcam(model, images, targets, layer)
        torch.testing.assert_close(got[2], ref.activations)
        torch.testing.assert_close(got[3], ref.gradients, rtol=1e-4, atol=1e-7)
