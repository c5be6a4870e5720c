"""Shared fixtures: seeded random VGG19 and one VGG19 export per test session."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from gradcam_fast import export_onnx, load_vgg
from gradcam_fast.runtime.cpu_choice import FLAGS_ENV

# backend/precision "auto" (the command line's default) picks exact ONNX Runtime float32 in
# every test, whatever CPU runs the suite (no CPU features). Set for the whole process, not only
# per test: Ray's workers and Serve's replicas are started by module-scoped fixtures, before any
# function-scoped fixture runs, and take the environment of that moment.
os.environ[FLAGS_ENV] = ""


@pytest.fixture(autouse=True)
def exact_auto(monkeypatch):
    """The same pin per test, so that a test of auto that changes the variable is undone."""
    monkeypatch.setenv(FLAGS_ENV, "")


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
