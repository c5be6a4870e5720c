"""GradCAMGraph (torch) against the eager reference (`eager_gradcam`)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_tiny_vgg
from torch import nn

from gradcam_fast import GradCAMGraph, eager_gradcam
from gradcam_fast.cams.postprocess import gradcam_lowres
from gradcam_fast.check.compare import TOLERANCE, relative_error
from gradcam_fast.core.graph import resolve_targets


def assert_matches_eager(model, images, targets, layer, tol=TOLERANCE):
    graph = GradCAMGraph(model, layer, targets.shape[1])
    with torch.inference_mode():  # the graph needs no autograd at all
        logits, classes, activations, gradients = graph(images, targets)
    ref = eager_gradcam(model, images, targets, layer)
    assert torch.equal(classes, ref.target_classes)
    assert gradients.shape == ref.gradients.shape
    for name, got, want in [
        ("logits", logits, ref.logits),
        ("activations", activations, ref.activations),
        ("gradients", gradients, ref.gradients),
        ("cams_lowres", gradcam_lowres(activations, gradients), ref.cams_lowres),
    ]:
        assert relative_error(got, want) < tol, f"{name} of {layer}"
    return activations, gradients


# (layer, image size): the default, the final max-pool, the conv before the in-place ReLU, one
# inside an earlier block; sizes giving a 7x7 head (224 is in test_session), 3x3 pooled up to 7x7
# with overlapping bins (100) and odd 5x5 maps whose max-pool drops a row and column (90).
CASES = [
    (None, 100),
    (None, 90),
    ("features.36", 64),
    ("features.34", 90),
    ("features.20", 48),
    ("features.0", 32),
]


@pytest.mark.slow
@pytest.mark.parametrize(("layer", "size"), CASES)
def test_vgg19_layers_and_sizes_match_eager(vgg19, layer, size, rng):
    images = torch.randn(3, 3, size, size, generator=rng)
    # class indices, top ranks and a rank far deeper than K
    targets = torch.tensor([[-1, 5, -900], [3, -2, -1], [999, -1000, 0]])
    assert_matches_eager(vgg19, images, targets, layer)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_batch_sizes_match_eager(vgg19, batch, rng):
    images = torch.randn(batch, 3, 64, 64, generator=rng)
    targets = torch.full((batch, 1), -1)
    assert_matches_eager(vgg19, images, targets, None)


def test_inplace_relu_does_not_corrupt_conv_target(vgg19, rng):
    # features.35 is ReLU(inplace=True) right after the target conv features.34: the graph must
    # return the conv output (with negative values), not what the ReLU overwrote it with.
    assert vgg19.features[35].inplace
    images = torch.randn(2, 3, 64, 64, generator=rng)
    activations, _ = assert_matches_eager(vgg19, images, torch.full((2, 1), -1), "features.34")
    assert activations.min() < 0


def test_default_target_is_last_layer_before_final_pool(vgg19):
    assert GradCAMGraph(vgg19).target_layer == "features.35"


def test_target_that_is_no_feature_map_is_refused_naming_its_shape(vgg19):
    with pytest.raises(
        ValueError, match=r"'classifier\.0' outputs shape \[B, 4096\], not a feature"
    ):
        GradCAMGraph(vgg19, "classifier.0")


def test_unknown_target_layer_is_refused_with_close_matches(vgg19):
    with pytest.raises(ValueError, match=r"no layer 'features\.355'.*close matches: features\.35"):
        GradCAMGraph(vgg19, "features.355")


def _integer_tie_model(seed: int = 0) -> nn.Module:
    """Integer weights and inputs make max-pool windows tie often, at zero and above zero."""
    model = make_tiny_vgg([4, "M", 6, "M"], num_classes=5, pool=3, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.features:
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randint(-1, 2, m.weight.shape, generator=gen).float())
                m.bias.zero_()
    return model


def _tie_counts(x: torch.Tensor) -> tuple[int, int]:
    """(windows whose maximum appears twice or more, those whose tied maximum is positive)."""
    h, w = x.shape[-2:]
    win = x[..., : h // 2 * 2, : w // 2 * 2].unfold(2, 2, 2).unfold(3, 2, 2).reshape(-1, 4)
    top = win.max(dim=1, keepdim=True).values
    tied = (win == top).sum(dim=1) > 1
    return int(tied.sum()), int((tied & (top.squeeze(1) > 0)).sum())


@pytest.mark.parametrize("layer", ["features.0", "features.1", "features.3"])
def test_maxpool_ties_follow_pytorch_first_maximum_rule(layer):
    model = _integer_tie_model()
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 3, (4, 3, 13, 13), generator=gen).float()  # odd size: floor mode
    with torch.no_grad():
        pooled_input = model.features[:2](images.clone())  # ReLU output entering the 1st pool
    ties, positive_ties = _tie_counts(pooled_input)
    assert ties > 50 and positive_ties > 5, "the inputs must really produce ties"
    targets = torch.tensor([[-1, -2]] * 4)
    _, gradients = assert_matches_eager(model, images, targets, layer, tol=1e-6)
    assert gradients.abs().sum() > 0


def test_batchnorm_model_matches_eager(rng):
    model = make_tiny_vgg([8, "M", 16, 16, "M"], batch_norm=True, pool=3)
    images = torch.randn(2, 3, 36, 36, generator=rng)
    for layer in ["features.1", "features.4", "features.10"]:  # a BatchNorm, a conv, a ReLU
        assert_matches_eager(model, images, torch.tensor([[-1, 2], [4, -3]]), layer)


def test_resolve_targets_ranks_any_depth():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3))
    order = logits.argsort(dim=1, descending=True)
    targets = torch.tensor([[-1, -2, 7], [-50, 0, -26], [49, -3, -1], [-49, -50, 5]])
    got = resolve_targets(logits, targets)
    for b in range(4):
        for k in range(3):
            t = int(targets[b, k])
            assert int(got[b, k]) == (t if t >= 0 else int(order[b, -t - 1]))


def test_graph_registers_no_hooks_and_needs_no_grad(vgg19, rng):
    graph = GradCAMGraph(vgg19, None, 2)
    hooks = [
        m for m in vgg19.modules() if m._forward_hooks or m._backward_hooks or m._forward_pre_hooks
    ]
    assert hooks == []
    with torch.no_grad():
        *_, gradients = graph(torch.randn(1, 3, 64, 64, generator=rng), torch.tensor([[-1, -2]]))
    assert gradients.shape == (1, 2, 512, 4, 4) and not gradients.requires_grad


@pytest.mark.slow
@pytest.mark.parametrize(
    ("layer", "size", "shortcut"),
    [(None, 224, True), (None, 90, True), ("features.36", 100, True), ("features.34", 64, False)],
)
def test_channel_weights_only_graph_matches_eager_weights(vgg19, layer, size, shortcut, rng):
    # channel_weights_only=True: Grad-CAM's weights through the first Linear's per-channel sums
    # when only pooling lies between target and classifier (max-pool floor mode and overlapping
    # adaptive bins included), else the spatial mean of the full VJP
    graph = GradCAMGraph(vgg19, layer, 2, channel_weights_only=True)
    assert (graph.first_linear is not None) == shortcut
    images = torch.randn(2, 3, size, size, generator=rng)
    targets = torch.tensor([[-1, 7], [3, -400]])
    with torch.inference_mode():
        logits, classes, _, weights = graph(images, targets)
    ref = eager_gradcam(vgg19, images, targets, layer)
    assert torch.equal(classes, ref.target_classes)
    assert weights.shape == (2, 2, 512)
    assert relative_error(weights, ref.gradients.mean(dim=(-2, -1))) < TOLERANCE
    assert relative_error(logits, ref.logits) < TOLERANCE
