"""Exported models cached on disk, keyed by what makes them differ: export on first use.

Processes sharing a cache export one at a time (a lock file, `.export.lock`, in the folder):
the second finds the first's model and reuses it. A model appears in the cache only once it
validated (`export_onnx` renames it into place last), so any model file found there is whole.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from ..format.options import channel_weights_only_of
from ..model.file_identity import file_identity
from ..runtime.cachedir import cache_dir

if TYPE_CHECKING:
    from ..runtime.session import GradCAMSession

__all__ = ["cache_dir", "cached_model", "open_session"]

LOCK_NAME = ".export.lock"


def _weights_key(weights: str | os.PathLike, seed: int) -> str:
    weights = os.fspath(weights)
    if weights == "imagenet":
        return "imagenet"
    if weights == "random":
        return f"random{seed}"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {weights!r} does not exist")
    return file_identity(path).replace(":", "-")


def cached_model(
    arch: str = "vgg19",
    weights: str | os.PathLike = "imagenet",
    *,
    target_layer: str | None = None,
    image_size: int = 224,
    num_targets: int = 1,
    seed: int = 0,
    channel_weights_only: bool = False,
    precision: str = "float32",
    calibration: str | os.PathLike | None = None,
    calibration_method: str = "minmax",
    gradients: bool | None = None,
) -> Path:
    """Path of the exported model for these settings, exporting (and validating) it if missing.

    `channel_weights_only=True` caches the channel-weights model (`export_onnx(...,
    channel_weights_only=True)`, file name ending in `-cw`): enough for Grad-CAM, and cheaper
    at small batches; the other methods need the gradients. `gradients=False` is its
    deprecated spelling (a DeprecationWarning).
    `precision="int8"` caches the int8 model calibrated on the `calibration` folder, keyed by a
    hash of the folder's images (another set of photos gives another model).
    """
    from ..export.onnx_export import export_onnx

    channel_weights_only = channel_weights_only_of(channel_weights_only, gradients, "cached_model")
    name = "-".join([arch, _weights_key(weights, seed), target_layer or "default", str(image_size)])
    if precision == "int8":
        from ..io.calibration import calibration_fingerprint

        if calibration is None:
            raise ValueError("precision='int8' needs a calibration folder")
        name += f"-int8-{calibration_method}-{calibration_fingerprint(calibration)}"
    elif precision != "float32":
        raise ValueError(f"the model cache holds float32 and int8 models, not {precision!r}")
    path = cache_dir() / f"{name}-k{num_targets}{'-cw' if channel_weights_only else ''}.onnx"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.parent / LOCK_NAME):
        if path.is_file():  # another process exported it while this one waited
            return path
        export_onnx(
            arch,
            path,
            target_layer=target_layer,
            image_size=image_size,
            num_targets=num_targets,
            weights=weights,
            seed=seed,
            channel_weights_only=channel_weights_only,
            precision=precision,
            calibration=calibration,
            calibration_method=calibration_method,
        )
    return path


def open_session(
    model: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    tensorrt: bool = False,
    session_options: dict | None = None,
    **settings,
) -> GradCAMSession:
    """A session for the exported `model` file, or else for the cached export of `settings`
    (`cached_model`'s arch, weights, target_layer, image_size, num_targets, seed, channel_weights_only;
    made if missing). `session_options`: more GradCAMSession keywords (backend, precision,
    calibration, ...)."""
    from ..runtime.session import GradCAMSession

    path = model or cached_model(**settings)
    return GradCAMSession(path, device=device, tensorrt=tensorrt, **(session_options or {}))
