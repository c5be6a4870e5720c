"""Post-processing against the formulas written out element by element."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gradcam_fast.cams.postprocess import gradcam_lowres, upsample_normalize


def test_gradcam_lowres_is_relu_of_mean_gradient_weighted_sum():
    gen = torch.Generator().manual_seed(0)
    activations = torch.randn(2, 5, 3, 4, generator=gen)
    gradients = torch.randn(2, 3, 5, 3, 4, generator=gen)
    got = gradcam_lowres(activations, gradients)
    assert got.shape == (2, 3, 3, 4)
    for b in range(2):
        for k in range(3):
            expected = torch.zeros(3, 4)
            for c in range(5):
                expected += gradients[b, k, c].mean() * activations[b, c]
            torch.testing.assert_close(got[b, k], expected.clamp(min=0))


def test_upsample_normalize_is_bilinear_then_min_max():
    gen = torch.Generator().manual_seed(1)
    lowres = torch.rand(2, 2, 5, 5, generator=gen)
    got = upsample_normalize(lowres.clone(), 37)
    up = F.interpolate(lowres, size=(37, 37), mode="bilinear", align_corners=False)
    for b in range(2):
        for k in range(2):
            m = up[b, k]
            torch.testing.assert_close(got[b, k], (m - m.min()) / (m.max() - m.min()))
            assert float(got[b, k].min()) == 0.0 and float(got[b, k].max()) == 1.0


def test_flat_maps_become_zeros_not_nan():
    lowres = torch.zeros(1, 3, 4, 4)
    lowres[0, 1] = 0.37  # constant but not zero: interpolation ripples must not become noise
    lowres[0, 2, 1, 2] = 1.0  # a real map next to the flat ones
    got = upsample_normalize(lowres, 16)
    assert not torch.isnan(got).any()
    assert torch.count_nonzero(got[0, :2]) == 0
    assert float(got[0, 2].max()) == 1.0


def test_lowres_input_is_not_modified():
    lowres = torch.rand(1, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    before = lowres.clone()
    upsample_normalize(lowres, 9)
    assert torch.equal(lowres, before)


def test_a_map_upsampled_to_one_pixel_is_zero_not_nan():
    """A non-flat map whose upsampled copy is flat (one output pixel: its max equals its min)
    has nothing to normalize: 0, not 0 / 0."""
    lowres = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    got = upsample_normalize(lowres, 1)
    assert got.shape == (1, 1, 1, 1) and torch.equal(got, torch.zeros(1, 1, 1, 1))
