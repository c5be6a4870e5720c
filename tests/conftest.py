"""Shared fixtures: seeded random VGG19 and one VGG19 export per test session."""

from __future__ import annotations

import warnings

import pytest
import torch

from gradcam_fast import export_onnx, load_vgg


@pytest.fixture(autouse=True)
def exact_auto(monkeypatch):
    """backend/precision "auto" (the command line's default) picks exact ONNX Runtime float32
    in every test, whatever CPU runs the suite (cpu_choice.FLAGS_ENV: no CPU features). Tests
    of auto itself pass flags to cpu_choice or set the variable themselves."""
    monkeypatch.setenv("GRADCAM_FAST_CPU_FLAGS", "")


@pytest.fixture(scope="session")
def vgg19():
    """VGG19 with seeded random weights (pretrained weights are never downloaded in tests)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_vgg("vgg19", "random", seed=0)


@pytest.fixture(scope="session")
def vgg19_onnx_224(vgg19, tmp_path_factory):
    """The default VGG19 graph (features.35) at 224 with K=3, exported once per session."""
    path = tmp_path_factory.mktemp("onnx") / "vgg19_224_k3.onnx"
    return export_onnx(vgg19, path, image_size=224, num_targets=3, validate=False)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
