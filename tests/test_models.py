"""The VGG family in depth (every named arch, BatchNorm ones with non-identity statistics, other
torchvision VGG instances) against the eager reference; the arch table against torchvision's
registry; target-layer names, defaults and refusals. Other families: tests/test_families.py."""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import make_tiny_vgg
from torch import nn
from torchvision import models as tvm
from torchvision.models.vgg import cfgs

from gradcam_fast import GradCAMGraph, GradCAMSession, eager_gradcam, export_onnx, load_vgg
from gradcam_fast.cams.postprocess import gradcam_lowres
from gradcam_fast.check.compare import TOLERANCE, relative_error
from gradcam_fast.model.catalog import ARCH_TABLE, TRANSFORMER_PREFIXES
from gradcam_fast.model.loading import (
    ARCHS,
    default_target_layer,
    layer_names,
    load_model,
)

# arch -> (torchvision config, batch norm, default target: last layer before the final max-pool)
FAMILY = {
    "vgg11": ("A", False, "features.19"),
    "vgg13": ("B", False, "features.23"),
    "vgg16": ("D", False, "features.29"),
    "vgg19": ("E", False, "features.35"),
    "vgg11_bn": ("A", True, "features.27"),
    "vgg13_bn": ("B", True, "features.33"),
    "vgg16_bn": ("D", True, "features.42"),
    "vgg19_bn": ("E", True, "features.51"),
}


def on_meta(arch: str) -> nn.Module:
    """torchvision's `arch` built on the meta device: its layers and shapes, no weights."""
    with torch.device("meta"):
        return tvm.get_model(arch, weights=None).eval()


def feature_names(model: nn.Module) -> list[str]:
    return [f"features.{i}" for i in range(len(model.features))]


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> int:
    """Running statistics and affine parameters away from the identity; returns how many."""
    gen = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in layers:
            m.running_mean.normal_(0, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.uniform_(0.7, 1.5, generator=gen)
            m.bias.normal_(0, 0.1, generator=gen)
    return len(layers)


def assert_graph_matches_eager(model, images, targets, layer):
    graph = GradCAMGraph(model, layer, targets.shape[1], image_size=images.shape[-1])
    with torch.inference_mode():
        logits, classes, activations, gradients = graph(images, targets)
    ref = eager_gradcam(model, images, targets, layer)
    assert torch.equal(classes, ref.target_classes), layer
    assert ref.gradients.abs().max() > 0, f"trivial case at {layer}"
    for name, got, want in [
        ("logits", logits, ref.logits),
        ("activations", activations, ref.activations),
        ("gradients", gradients, ref.gradients),
        ("cams_lowres", gradcam_lowres(activations, gradients), ref.cams_lowres),
    ]:
        assert relative_error(got, want) < TOLERANCE, f"{name} at {layer}"


def test_arch_table_is_torchvisions_cnn_registry():
    """ARCHS holds every CNN of torchvision's registry (68), transformers aside, each with its
    default weights' enum and preprocessing (resize, crop, interpolation)."""
    cnns = {n for n in tvm.list_models(module=tvm) if not n.startswith(TRANSFORMER_PREFIXES)}
    assert set(ARCHS) == cnns and len(cnns) == 68
    assert set(FAMILY) <= set(ARCHS)
    for arch, (weights, resize, crop, interpolation) in ARCH_TABLE.items():
        enum = tvm.get_model_weights(arch)
        assert enum.__name__ == weights, arch
        transforms = enum.DEFAULT.transforms()
        assert len(enum.DEFAULT.meta["categories"]) == 1000, arch
        assert (transforms.resize_size[0], transforms.crop_size[0]) == (resize, crop), arch
        assert transforms.interpolation.value == interpolation, arch


@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t", "maxvit_t"])
def test_transformers_are_refused_clearly(arch):
    with pytest.raises(ValueError, match=rf"{arch} is a vision transformer.*CNNs"):
        load_model(arch, "random")


def test_unknown_arch_names_close_matches():
    with pytest.raises(ValueError, match=r"unknown arch 'resnet05'.*did you mean.*resnet50"):
        load_model("resnet05", "random")


def test_load_model_records_the_weights_preprocessing():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = load_model("mobilenet_v3_small", "random").gradcam_fast_info
    assert (info.arch, info.resize_size, info.crop_size, info.interpolation) == (
        "mobilenet_v3_small",
        256,
        224,
        "bilinear",
    )
    assert info.categories[281] == "tabby"


@pytest.mark.parametrize("arch", list(FAMILY))
def test_default_target_is_the_last_layer_before_the_final_pool(arch):
    model = on_meta(arch)
    expected = FAMILY[arch][2]
    assert default_target_layer(model) == expected
    index = int(expected.split(".")[1])
    assert isinstance(model.features[index], nn.ReLU)
    assert isinstance(model.features[index + 1], nn.MaxPool2d)
    assert index + 2 == len(model.features)


@pytest.mark.parametrize("arch", list(FAMILY))
def test_every_features_layer_is_a_layer(arch):
    model = on_meta(arch)
    names = layer_names(model)
    assert set(feature_names(model)) <= set(names)
    assert names[-1] == "classifier.6"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("features.99", r"no layer 'features\.99'; close matches: features\.\d"),
        ("Features.0", r"no layer 'Features\.0'; close matches: features\.0"),
        ("35", r"no layer '35'"),
        ("classifier.0", r"'classifier\.0' outputs shape \[B, 32\], not a feature map"),
        ("avgpool", None),  # a feature map: accepted
    ],
)
def test_an_invalid_target_layer_is_refused_naming_the_problem(bad, message):
    model = make_tiny_vgg()
    if message is None:
        assert GradCAMGraph(model, bad, image_size=32).target_layer == bad
        return
    with pytest.raises(ValueError, match=message):
        GradCAMGraph(model, bad, image_size=32)


def small_classifier(num_classes: int = 1000) -> nn.Sequential:
    """VGG's classifier layout (Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear) at width 64
    instead of 4096: the eager reference then computes 1.7M weight gradients, not 120M."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return nn.Sequential(
            nn.Linear(512 * 7 * 7, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, 64),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(64, num_classes),
        ).eval()


@pytest.mark.parametrize("arch", list(FAMILY))
def test_named_arch_matches_eager(arch):
    """Each arch's `features` as `load_vgg` builds them, at 32x32 (1x1 maps pooled up to 7x7 by
    the stock avgpool), at the default target and the first conv (for _bn variants the first and
    last BatchNorm instead), with random BatchNorm statistics. The classifier is narrowed (same layout;
    the stock one is shared by all archs and checked at full size in test_graph's VGG19 cases)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_vgg(arch, "random", seed=1)
    model.classifier = small_classifier()
    bn = FAMILY[arch][1]
    assert randomize_batchnorm(model) == (sum(c != "M" for c in cfgs[FAMILY[arch][0]]) if bn else 0)
    layers = [None, "features.0"]
    if bn:  # the first BatchNorm stands in for the first conv: the whole network is "head"
        norms = [i for i, m in enumerate(model.features) if isinstance(m, nn.BatchNorm2d)]
        layers = [None, f"features.{norms[0]}", f"features.{norms[-1]}"]
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 32, 32, generator=gen)
    targets = torch.tensor([[-1, 7], [123, -2]])
    for layer in layers:
        assert_graph_matches_eager(model, images, targets, layer)


@pytest.mark.parametrize(
    ("cfg", "pool", "num_classes", "size"),
    [
        ((16, "M", 32, 32, "M", 24, "M"), 3, 7, 48),
        ((8, 8, "M", 16, "M"), 1, 3, 20),
        ((8, "M", 16, "M", 16, 16, "M", 16, "M"), 5, 12, 64),
    ],
)
def test_other_vgg_instances_match_eager_at_every_layer(cfg, pool, num_classes, size):
    model = make_tiny_vgg(cfg=cfg, pool=pool, num_classes=num_classes, batch_norm=True, seed=4)
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    targets = torch.tensor([[-1, 1], [num_classes - 1, -2]])
    for name in feature_names(model):
        assert_graph_matches_eager(model, images, targets, name)


@pytest.mark.slow
def test_other_vgg_instance_exports_and_runs(tmp_path):
    """A torchvision VGG with another config, class count and pooling size, BatchNorm with
    random statistics, through ONNX Runtime (export validates it; a second batch checks again)."""
    model = make_tiny_vgg(
        cfg=(16, "M", 32, 32, "M", 24, "M"), pool=3, num_classes=7, batch_norm=True
    )
    path = export_onnx(model, tmp_path / "custom.onnx", image_size=48, num_targets=2)
    session = GradCAMSession(path, device="cpu")
    meta = session.metadata
    assert (meta.arch, meta.num_classes, meta.target_layer) == ("vgg", 7, "features.13")
    images = torch.randn(4, 3, 48, 48, generator=torch.Generator().manual_seed(6))
    targets = torch.tensor([[-1, 6], [0, -2], [-7, 3], [-1, -3]])
    got = session(images, targets)
    ref = eager_gradcam(model, images, targets)
    assert torch.equal(got.target_classes, ref.target_classes)
    for name in ("logits", "activations", "gradients", "cams_lowres"):
        assert relative_error(getattr(got, name), getattr(ref, name)) < TOLERANCE, name
