"""Fixtures of the benchmark suite: the profile's model, its exports, seeded inputs, and the eager
reference every contender is checked against before it is timed.

$GRADCAM_BENCH_PROFILE picks the profile ("tiny" by default: CI-sized; "full": VGG19 at 224).
$GRADCAM_BENCH_MODELS, when set, is the folder the exports are written to (the report uses it to
hand them to its memory probes); otherwise a pytest temporary folder.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from benchmarks.config import Profile, active_profile
from benchmarks.contenders import Setup, export_floor, make_model, seeded_images
from gradcam_fast import eager_gradcam, export_onnx
from gradcam_fast.format.result import GradCAMResult
from gradcam_fast.runtime.session import cpu_count

MODELS_ENV = "GRADCAM_BENCH_MODELS"


def export_all(model: torch.nn.Module, folder: Path, profile: Profile) -> None:
    """Export into `folder`, each file under the name its contenders look for in Setup.paths
    (its stem): the Grad-CAM graph (gradcam_k1 and gradcam_k{profile.num_targets}), its
    channel-weights, external-data (weights in .onnx.data beside it) and int8 (int8 body, channel
    weights only) variants, OpenVINO's NNCF int8 file (where openvino is installed) and the plain
    model (the floor). Not validated here: every contender is checked before it is timed."""
    from gradcam_fast.runtime.cpu_choice import openvino_installed

    size = profile.image_size
    for k in (1, profile.num_targets):
        path = folder / f"gradcam_k{k}.onnx"
        export_onnx(model, path, image_size=size, num_targets=k, validate=False)
    cw = {"image_size": size, "channel_weights_only": True, "validate": False}
    channel_weights = export_onnx(model, folder / "gradcam_channel_weights.onnx", **cw)
    external = folder / "gradcam_external.onnx"
    export_onnx(model, external, image_size=size, external_data=True, validate=False)
    # int8 calibrated on seeded noise: the cost does not depend on it (lowp.py judges fidelity)
    calibration = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(99))
    int8 = folder / "gradcam_int8.onnx"
    export_onnx(model, int8, precision="int8", calibration=calibration, **cw)
    if openvino_installed():  # OpenVINO's int8: NNCF on the float32 channel-weights file
        from gradcam_fast.format.onnx_props import file_metadata
        from gradcam_fast.runtime.int8_cache import write_int8

        meta = file_metadata(channel_weights)
        write_int8(channel_weights, folder / "gradcam_ov_int8.onnx", meta, "openvino", calibration)
    export_floor(model, folder / "floor.onnx", size)


@pytest.fixture(scope="session")
def profile() -> Profile:
    torch.set_num_threads(cpu_count())  # the thread count ONNX Runtime sessions use
    return active_profile()


@pytest.fixture(scope="session")
def setup(profile: Profile, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    model = make_model(profile.model)
    folder = Path(os.environ.get(MODELS_ENV) or tmp_path_factory.mktemp("models"))
    export_all(model, folder, profile)
    return Setup.from_folder(model, folder, profile.image_size)


@pytest.fixture(scope="session")
def images_for(profile: Profile) -> Callable[[int], torch.Tensor]:
    """Seeded normalized-like images [B,3,S,S], the same tensor for every contender."""
    return functools.cache(lambda batch: seeded_images(batch, profile.image_size))


@pytest.fixture(scope="session")
def reference_for(
    setup: Setup, images_for: Callable[[int], torch.Tensor]
) -> Callable[[int, int], GradCAMResult]:
    """`eager_gradcam` of the batch for its top K classes: the eager reference, and the classes every
    contender is asked to explain (explicit indices, so no contender re-ranks logits)."""

    @functools.cache
    def get(batch: int, k: int = 1) -> GradCAMResult:
        ranks = torch.arange(-1, -k - 1, -1).expand(batch, k)
        return eager_gradcam(setup.model, images_for(batch), ranks, setup.target_layer)

    return get
