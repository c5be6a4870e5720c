"""The CAM family: each method against its paper's formula written out plainly, the session's
`method=` and `aug_smooth=` against their definitions, and pytorch-grad-cam and TorchCAM where
installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_vgg
from torch import nn

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx
from gradcam_fast.cams.methods import METHODS, cam_lowres, check_method, eigencam
from gradcam_fast.cams.postprocess import upsample_normalize
from gradcam_fast.check.compare import TOLERANCE, relative_error
from gradcam_fast.runtime.smooth import AUGMENTATIONS, aug_smooth_cams

NAMES = [
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "gradcamelementwise",
    "layercam",
    "eigencam",
]
IMAGE_SIZE = 32


def paper_map(name: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """One map from one image's activations a [C,h,w] and one target's gradients g [C,h,w], in
    float64, straight from each paper's formula, then the ReLU every method ends with."""
    c = a.shape[0]
    if name == "gradcam":
        cam = np.tensordot(g.mean(axis=(1, 2)), a, axes=1)
    elif name == "gradcam++":
        s = a.sum(axis=(1, 2))[:, None, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where(g != 0, g**2 / (2 * g**2 + s * g**3), 0.0)
        cam = np.tensordot((alpha * np.maximum(g, 0)).sum(axis=(1, 2)), a, axes=1)
    elif name == "xgradcam":
        weights = (g * a).sum(axis=(1, 2)) / a.sum(axis=(1, 2))
        cam = np.tensordot(weights, a, axes=1)
    elif name == "hirescam":
        cam = (g * a).sum(axis=0)
    elif name == "gradcamelementwise":
        cam = np.maximum(g * a, 0).sum(axis=0)
    elif name == "layercam":
        cam = (np.maximum(g, 0) * a).sum(axis=0)
    elif name == "eigencam":
        x = a.reshape(c, -1).T
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        cam = x @ vt[0]
        if (cam * x.sum(axis=1)).sum() < 0:  # the documented sign convention
            cam = -cam
        cam = cam.reshape(a.shape[1:])
    else:
        raise AssertionError(name)
    return np.maximum(cam, 0)


def random_inputs(seed: int, b: int, k: int, c: int, h: int, w: int, signed: bool = False):
    """Activations (post-ReLU-like, with zeros, unless `signed`) and gradients with exact zeros."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(b, c, h, w, generator=gen)
    a = a if signed else a.relu() + 0.1 * torch.rand(b, c, h, w, generator=gen)
    g = torch.randn(b, k, c, h, w, generator=gen)
    g = g * (torch.rand(b, k, c, h, w, generator=gen) > 0.2)
    return a, g


def test_registry_has_the_issues_names():
    assert list(METHODS) == NAMES


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "shape",
    [(2, 3, 6, 5, 4), (1, 2, 32, 3, 3)],  # h*w > C and h*w <= C (eigencam's two Gram matrices)
    ids=["wide", "deep"],
)
def test_method_matches_paper_formula(name, shape):
    b, k, _, h, w = shape
    a, g = random_inputs(0, *shape)
    got = METHODS[name](a, g)
    assert got.shape == (b, k, h, w) and got.dtype == torch.float32
    want = np.stack(
        [
            np.stack(
                [paper_map(name, a[i].double().numpy(), g[i, j].double().numpy()) for j in range(k)]
            )
            for i in range(b)
        ]
    )
    assert np.abs(want).max() > 0  # a non-trivial case
    assert relative_error(got, torch.from_numpy(want)) < 1e-5


@pytest.mark.parametrize(
    "name", ["gradcam", "hirescam", "gradcamelementwise", "layercam", "eigencam"]
)
def test_method_with_signed_activations(name):
    """A conv layer as target: activations take both signs (gradcam++/xgradcam divide by their
    spatial sum, ill-conditioned near zero, so they are checked on post-ReLU ones above)."""
    a, g = random_inputs(1, 2, 2, 8, 4, 5, signed=True)
    want = np.stack(
        [
            np.stack(
                [paper_map(name, a[i].double().numpy(), g[i, j].double().numpy()) for j in range(2)]
            )
            for i in range(2)
        ]
    )
    assert relative_error(METHODS[name](a, g), torch.from_numpy(want)) < 1e-5


def test_gradcam_plusplus_is_zero_where_gradients_are_not_positive():
    a, g = random_inputs(2, 2, 2, 6, 4, 4)
    g[0, 1] = 0.0
    g[1, 0] = -g[1, 0].abs()
    cams = METHODS["gradcam++"](a, g)
    assert torch.count_nonzero(cams[0, 1]) == 0 and torch.count_nonzero(cams[1, 0]) == 0
    assert cams[0, 0].max() > 0 and cams[1, 1].max() > 0
    assert torch.isfinite(METHODS["gradcam++"](a, g * 1e-20)).all()  # no g^3 underflow to 0/0


def test_xgradcam_channels_with_zero_sum_get_zero_weight():
    a, g = random_inputs(3, 1, 1, 4, 3, 3)
    a[0, 1:] = 0.0  # only channel 0 is active
    cams = METHODS["xgradcam"](a, g)
    weight = (g[0, 0, 0] * a[0, 0]).sum() / a[0, 0].sum()
    torch.testing.assert_close(cams[0, 0], (weight * a[0, 0]).relu())


def test_eigencam_points_at_the_strongly_activated_region():
    """The sign convention: a blob where most channels fire must be the bright part of the map,
    whatever sign the eigen-solver returns, for the image and its negated-noise twin."""
    gen = torch.Generator().manual_seed(4)
    blob = torch.zeros(7, 7)
    blob[1:3, 4:6] = 1.0
    loadings = torch.rand(16, generator=gen) + 0.5
    a = (loadings[:, None, None] * blob + 0.05 * torch.rand(16, 7, 7, generator=gen))[None]
    cams = eigencam(a, torch.zeros(1, 3, 16, 7, 7))
    assert cams.shape == (1, 3, 7, 7)
    assert torch.equal(cams[0, 0], cams[0, 2])  # no gradient: every target gets the same map
    assert cams[0, 0][blob > 0].min() > cams[0, 0][blob == 0].max()


def test_eigencam_ignores_gradients_and_handles_a_single_position():
    a, g = random_inputs(5, 2, 2, 6, 4, 4)
    torch.testing.assert_close(eigencam(a, g), eigencam(a, torch.randn_like(g)))
    one = eigencam(a[..., :1, :1], g[..., :1, :1])  # 1x1 maps: centered data is zero
    assert one.shape == (2, 2, 1, 1) and torch.count_nonzero(one) == 0


def test_unknown_method_and_bad_shapes_are_refused():
    with pytest.raises(
        ValueError, match=r"unknown CAM method 'gradcam\+\+\+'.*gradcam\+\+, xgradcam"
    ):
        check_method("gradcam+++")
    a, g = random_inputs(0, 2, 1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"gradients \[B, K, C, h, w\]"):
        cam_lowres("gradcam", a, g[:, 0])
    with pytest.raises(ValueError, match="unknown CAM method"):
        cam_lowres("GradCAM", a, g)


# --- through a session ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vgg(batch_norm=True, seed=3)


@pytest.fixture(scope="module")
def session(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("methods") / "tiny_bn.onnx"
    export_onnx(tiny, path, image_size=IMAGE_SIZE, num_targets=2, validate=False)
    return GradCAMSession(path, device="cpu")


@pytest.fixture(scope="module")
def images():
    return torch.randn(5, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name", NAMES)
def test_session_method_matches_the_method_on_eager_tensors(session, tiny, images, name):
    targets = torch.tensor([[-1, 3], [-2, -1], [0, 9], [-3, 4], [5, -1]])
    got = session(images, targets, method=name)
    ref = eager_gradcam(tiny, images, targets)
    assert torch.equal(got.target_classes, ref.target_classes)
    want = METHODS[name](ref.activations, ref.gradients)
    assert want.max() > 0
    assert relative_error(got.cams_lowres, want) < TOLERANCE
    # the session's maps against the eager maps upsampled and min-max normalized here, plainly
    up = torch.nn.functional.interpolate(want, size=IMAGE_SIZE, mode="bilinear")
    low, high = up.amin(dim=(-2, -1), keepdim=True), up.amax(dim=(-2, -1), keepdim=True)
    flat = want.amin(dim=(-2, -1), keepdim=True) == want.amax(dim=(-2, -1), keepdim=True)
    expected = torch.where(flat, torch.zeros_like(up), (up - low) / (high - low))
    torch.testing.assert_close(got.cams, expected, rtol=0, atol=1e-4)


def test_session_refuses_an_unknown_method(session, images):
    with pytest.raises(ValueError, match="choose one of gradcam, gradcam\\+\\+"):
        session(images, method="scorecam")


class _Spy:
    """A session stand-in that records the batches it runs."""

    def __init__(self, session):
        self.session, self.metadata, self.device = session, session.metadata, session.device
        self.batches: list[int] = []

    def __call__(self, images, targets, **kwargs):
        self.batches.append(images.shape[0])
        return self.session(images, targets, **kwargs)


def smoothed_by_loop(session, images, classes, method):
    """aug_smooth written the slow way: one run per augmentation, explicit classes."""
    cams, lowres = [], []
    for flip, factor in AUGMENTATIONS:
        x = (images.flip(-1) if flip else images) * factor
        r = session(x, classes, method=method)
        cams.append(r.cams.flip(-1) if flip else r.cams)
        lowres.append(r.cams_lowres.flip(-1) if flip else r.cams_lowres)
    return torch.stack(cams).mean(0), torch.stack(lowres).mean(0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "eigencam"])
def test_aug_smooth_is_the_mean_over_augmentations_in_one_run(session, images, method):
    targets = session(images).target_classes  # the top two classes, as class indices
    spy = _Spy(session)
    got = aug_smooth_cams(spy, images, targets, method)
    assert spy.batches == [len(AUGMENTATIONS) * images.shape[0]]  # one batched run
    cams, lowres = smoothed_by_loop(session, images, targets, method)
    torch.testing.assert_close(got.cams, cams, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.cams_lowres, lowres, rtol=1e-5, atol=1e-6)
    plain = session(images, targets, method=method)
    assert torch.equal(got.target_classes, plain.target_classes)
    torch.testing.assert_close(got.logits, plain.logits)
    assert not torch.allclose(got.cams, plain.cams, atol=1e-3)  # smoothing changed something
    via_call = session(images, targets, method=method, aug_smooth=True)
    torch.testing.assert_close(via_call.cams, got.cams)


def test_aug_smooth_explains_the_original_images_classes(session, images):
    """With ranks, a flipped or brightened copy may rank classes differently; the maps must still
    be those of the original image's classes (those copies are run again with class indices)."""
    targets = torch.tensor([[-2, -3]] * images.shape[0])  # lower ranks change more easily
    spy = _Spy(session)
    got = aug_smooth_cams(spy, images, targets, "gradcam")
    classes = session(images, targets).target_classes
    assert torch.equal(got.target_classes, classes)
    per_copy = session(
        torch.cat([(images.flip(-1) if f else images) * s for f, s in AUGMENTATIONS]),
        targets.repeat(len(AUGMENTATIONS), 1),
    )
    changed = (per_copy.target_classes != classes.repeat(len(AUGMENTATIONS), 1)).any(1)
    assert changed.any(), "the seeded inputs should exercise the re-run path"
    assert spy.batches == [len(AUGMENTATIONS) * images.shape[0], int(changed.sum())]
    cams, _ = smoothed_by_loop(session, images, classes, "gradcam")
    torch.testing.assert_close(got.cams, cams, rtol=1e-5, atol=1e-6)


# --- pytorch-grad-cam, where installed -------------------------------------------------------


def _pgc_classes():
    pgc = pytest.importorskip("pytorch_grad_cam")
    return {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "xgradcam": pgc.XGradCAM,
        "hirescam": pgc.HiResCAM,
        "gradcamelementwise": pgc.GradCAMElementWise,
        "layercam": pgc.LayerCAM,
        "eigencam": pgc.EigenCAM,
    }


@pytest.mark.parametrize("name", NAMES)
def test_method_matches_pytorch_grad_cam_formula(name, tiny):
    """Their `get_cam_image` on the same arrays, one target at a time (their eps terms, 1e-6 and
    1e-7, are negligible at these magnitudes). EigenCAM's sign is theirs to pick: either side."""
    cls = _pgc_classes()[name]
    a, g = random_inputs(6, 2, 3, 8, 5, 5)
    ours = METHODS[name](a, g)
    with cls(model=tiny, target_layers=[tiny.features[-2]]) as cam:
        for k in range(g.shape[1]):
            theirs = cam.get_cam_image(None, None, None, a.numpy(), g[:, k].numpy(), False)
            if name == "eigencam":
                flipped = np.maximum(-theirs, 0)
                theirs = np.maximum(theirs, 0)
                for i in range(a.shape[0]):
                    if np.abs(ours[i, k].numpy() - theirs[i]).max() > 1e-4:
                        theirs[i] = flipped[i]
            theirs = torch.from_numpy(np.maximum(theirs, 0))
            assert relative_error(ours[:, k], theirs) < 1e-4, (name, k)


@pytest.mark.parametrize(
    ("name", "aug_smooth"), [(n, False) for n in NAMES[:-1]] + [("gradcam", True)]
)
def test_session_matches_pytorch_grad_cam_end_to_end(session, tiny, images, name, aug_smooth):
    """Their hooks on the torch model against our ONNX session: the final maps, aug_smooth
    included. Their Grad-CAM++ adds 1e-6 to its alpha denominator, which moves maps by ~1e-3
    here (gradients ~1e-2); the others agree to float32 rounding."""
    cls = _pgc_classes()[name]
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours = session(images, None, method=name, aug_smooth=aug_smooth)
    classes = ours.target_classes[:, 0].tolist()
    with cls(model=tiny, target_layers=[tiny.features[-2]]) as cam:
        theirs = cam(images, [ClassifierOutputTarget(c) for c in classes], aug_smooth=aug_smooth)
    assert ours.cams[:, 0].std() > 0.05  # real maps, not flat ones
    diff = (ours.cams[:, 0] - torch.from_numpy(theirs)).abs().max()
    assert diff < (3e-3 if name == "gradcam++" else 1e-5)


# --- TorchCAM, where installed ---------------------------------------------------------------

TORCHCAM_NAMES = ["gradcam", "gradcam++", "xgradcam", "layercam"]  # those with a counterpart


def _torchcam_classes():
    methods = pytest.importorskip("torchcam.methods")
    return {
        "gradcam": methods.GradCAM,
        "gradcam++": methods.GradCAMpp,
        "xgradcam": methods.XGradCAM,
        "layercam": methods.LayerCAM,
    }


def torchcam_gradcampp(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """What TorchCAM 0.5.0's `GradCAMpp` computes: ReLU(sum_c w_c A_c) with w_c =
    sum_ij g^2 ReLU(g) = sum_ij ReLU(g)^3. Its alpha starts as g^2 and its division by the
    denominator, `alpha[idx][mask].div_(denom[mask] + eps)`, divides the copy that boolean
    indexing returns, so alpha stays g^2 (docs/methods.md). Not Grad-CAM++: ours is not compared
    with it; the tests below pin it so that a change upstream is noticed."""
    weights = gradients.clamp(min=0).pow(3).sum(dim=(-2, -1))
    return torch.einsum("bkc,bchw->bkhw", weights, activations).relu()


def torchcam_normalize(cams: torch.Tensor) -> torch.Tensor:
    """TorchCAM's `normalized=True` (its default), per map at the layer's resolution:
    (x - min) / (max - min + 1e-8)."""
    flat = cams.flatten(-2)
    flat = flat - flat.amin(-1, keepdim=True)
    return (flat / (flat.amax(-1, keepdim=True) + 1e-8)).reshape(cams.shape)


class _LinearScores(nn.Module):
    """A stand-in network for TorchCAM's hooks: its `layer` outputs the activations it is given,
    and score k of image b is sum(g[b, k] * A[b]), so the gradient TorchCAM's backward finds at
    the layer is exactly g[b, k]: their formulas run on our arrays through their public API."""

    def __init__(self, gradients: torch.Tensor):
        super().__init__()
        self.layer = nn.Identity()
        self.register_buffer("g", gradients)

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bkchw,bchw->bk", self.g, self.layer(activations))


@pytest.mark.parametrize("name", TORCHCAM_NAMES)
def test_method_matches_torchcam_formula(name):
    """TorchCAM's raw maps (`normalized=False`: its weighted sum and ReLU, no normalization) on
    the same arrays, one target at a time: equal to ours within 1e-5 relative (float32 rounding;
    XGradCAM's 1e-8 added to sum_ij(A) is negligible at these magnitudes), and far (> 1e-2) from
    every other method's map, so a swapped or wrong formula fails. Signed activations where the
    formula allows them (they separate LayerCAM from element-wise Grad-CAM, equal for A >= 0);
    Grad-CAM++ against what TorchCAM computes instead (`torchcam_gradcampp`)."""
    cls = _torchcam_classes()[name]
    a, g = random_inputs(8, 2, 3, 8, 5, 5, signed=name in ("gradcam", "layercam"))
    net = _LinearScores(g)
    ours = {other: METHODS[other](a, g) for other in METHODS}
    want = torchcam_gradcampp(a, g) if name == "gradcam++" else ours.pop(name)
    for k in range(g.shape[1]):
        with cls(net, "layer") as cam:
            theirs = cam([k] * a.shape[0], net(a.clone().requires_grad_()), normalized=False)[0]
        assert theirs.max() > 0  # a non-trivial case
        assert relative_error(want[:, k], theirs) < 1e-5, (name, k)
        for other, maps in ours.items():
            assert relative_error(maps[:, k], theirs) > 1e-2, (name, other, k)


@pytest.mark.parametrize("name", TORCHCAM_NAMES)
def test_session_matches_torchcam_end_to_end(session, tiny, images, name):
    """TorchCAM's hooks on the torch model, called as its README shows (`scores = model(x)`,
    then `cam_extractor(class_idx, scores)`), one target at a time, against the ONNX session's
    K = 2 maps (top classes and others). Compared like with like: their raw maps with our
    `cams_lowres` (relative error under TOLERANCE, 1e-4; measured 1e-7 to 4e-7); their default
    output, min-max normalized at the layer's resolution with their 1e-8, with ours normalized
    the same way, and, upsampled and min-max normalized as ours are, with our `cams` (max
    absolute difference under 1e-5; measured up to 1.1e-6). Grad-CAM++: their maps are those of
    `torchcam_gradcampp` on our activations and gradients, and differ from ours (by about 0.5
    here, normalized)."""
    cls = _torchcam_classes()[name]
    targets = torch.tensor([[-1, 3], [-2, -1], [0, 9], [-3, 4], [5, -1]])
    ours = session(images, targets, method=name)
    if name == "gradcam++":
        want = torchcam_gradcampp(ours.activations, ours.gradients)
    else:
        want = ours.cams_lowres
    for k in range(targets.shape[1]):
        classes = ours.target_classes[:, k].tolist()
        layer = tiny.features[-2]  # the session's default target layer
        with cls(tiny, layer) as cam:
            raw = cam(classes, tiny(images), normalized=False)[0]
            normalized = cam(classes, tiny(images))[0]
        assert normalized.std() > 0.1  # real maps, not flat ones
        assert relative_error(want[:, k], raw) < TOLERANCE, (name, k)
        assert (torchcam_normalize(want[:, k]) - normalized).abs().max() < 1e-5, (name, k)
        upsampled = upsample_normalize(normalized[:, None], IMAGE_SIZE)[:, 0]
        diff = (upsampled - ours.cams[:, k]).abs().max()
        assert diff > 0.1 if name == "gradcam++" else diff < 1e-5, (name, k, diff)
