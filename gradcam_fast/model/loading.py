"""Loading torchvision CNNs (and a caller's classifiers) and the facts about them that export
and preprocessing need: weights identity, class names, mean/std, resize, crop, interpolation.

A weights file is named by its content hash (`file_identity.py`); layers are named by tracing
(`layer_names.py`, whose two functions are also importable from here)."""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..format.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .catalog import ARCH_TABLE, ARCHS, TRANSFORMER_PREFIXES
from .file_identity import file_identity
from .layer_names import default_target_layer, layer_names

__all__ = [
    "ARCHS",
    "ModelInfo",
    "build_architecture",
    "default_target_layer",
    "layer_names",
    "load_model",
    "load_vgg",
    "model_info",
]

_warned_random: set[str] = set()


@dataclass(frozen=True)
class ModelInfo:
    """What an exported model records about where its network came from."""

    arch: str = "vgg"  # "vgg19", "resnet50", ... or the class name of a caller's own model
    weights: str = "unknown"  # "imagenet:<enum name>", "file:<sha256 prefix>", "random:seed=<n>"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    categories: tuple[str, ...] = field(default=(), repr=False)
    # The weights' preprocessing: Resize(resize_size) of the shorter side, CenterCrop(crop_size)
    # (scaled to an export's image size), with this interpolation.
    resize_size: int = 256
    crop_size: int = 224
    interpolation: str = "bilinear"


def model_info(model: nn.Module) -> ModelInfo:
    """The `ModelInfo` that `load_model` attached to `model`, or a generic one named after its
    class (ImageNet's preprocessing)."""
    info = getattr(model, "gradcam_fast_info", None)
    return info or ModelInfo(arch=type(model).__name__.lower())


def _load_state_dict_file(model: nn.Module, path: Path, arch: str) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated zips, code-running pickles
        unsafe = isinstance(exc, pickle.UnpicklingError) and "weights_only" in str(exc)
        reason = (
            "it holds pickled objects other than tensors, which could run code, and is refused "
            "(loaded with weights_only=True; nothing in it was run)"
            if unsafe
            else str(exc).splitlines()[0]
        )
        raise ValueError(
            f"cannot read weights file {path}: {reason}. It must be a plain tensor state_dict "
            "saved with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state_dict")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights file {path} is not a state_dict of {arch}: "
            f"missing keys {_few(missing)}, unexpected keys {_few(unexpected)}"
        )
    wrong = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(f"weights file {path} does not fit {arch}: {_few(wrong)}")
    model.load_state_dict(state)


def _few(items: list[str], limit: int = 6) -> str:
    if not items:
        return "[]"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def _builder_kwargs(arch: str) -> dict:
    """Build the architecture the ImageNet weights have: GoogLeNet and Inception v3 rescale
    their input in the graph (transform_input) and drop the auxiliary classifiers."""
    if arch in ("googlenet", "inception_v3"):
        return {"transform_input": True, "aux_logits": False, "init_weights": True}
    return {}


def _check_arch(arch: str) -> None:
    if arch in ARCHS:
        return
    if arch.startswith(TRANSFORMER_PREFIXES):
        raise ValueError(
            f"{arch} is a vision transformer: gradcam_fast explains CNNs for now (transformers "
            "need their token activations reshaped to a grid, a later step); choose a CNN: "
            f"{', '.join(sorted(ARCHS))}"
        )
    import difflib

    close = difflib.get_close_matches(arch, list(ARCHS), n=4, cutoff=0.5)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(f"unknown arch {arch!r}{hint}; choose one of {', '.join(sorted(ARCHS))}")


def build_architecture(arch: str) -> nn.Module:
    """`arch` as its ImageNet weights expect it, untrained and unseeded (for its layers)."""
    _check_arch(arch)
    from torchvision import models as tvm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's notes on init and aux_logits
        return tvm.get_model(arch, weights=None, **_builder_kwargs(arch)).eval()


def load_model(
    arch: str = "vgg19", weights: str | os.PathLike = "imagenet", *, seed: int = 0
) -> nn.Module:
    """Build the torchvision CNN `arch` (any of `ARCHS`: the 68 CNNs in torchvision's registry)
    in eval mode with `weights`: "imagenet" (its default ImageNet weights), a state_dict path,
    or "random" (seeded with `seed`).

    The returned model carries a `ModelInfo` (`model.gradcam_fast_info`) that export records in
    the ONNX metadata: arch, weights identity, class names and the weights' own preprocessing
    (mean/std, resize, crop, interpolation; also for random weights and files, which are taken
    to be trained like the ImageNet weights).
    """
    _check_arch(arch)
    from torchvision import models as tvm

    imagenet = getattr(tvm, ARCHS[arch]).DEFAULT
    categories = tuple(imagenet.meta["categories"])
    weights_str = os.fspath(weights)

    if weights_str == "imagenet":
        try:
            model = tvm.get_model(arch, weights=imagenet)
        except Exception as exc:
            raise RuntimeError(
                f"could not load torchvision's ImageNet weights for {arch} ({imagenet.url}): "
                f"{exc}. Without network access, pass weights=<path to a state_dict file> "
                "(CLI: --weights FILE) or weights='random' (untrained, for testing the pipeline)."
            ) from exc
        identity = f"imagenet:{imagenet}"
    elif weights_str == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_architecture(arch)
        identity = f"random:seed={seed}"
        if arch not in _warned_random:
            _warned_random.add(arch)
            warnings.warn(
                f"{arch} has random weights: its Grad-CAM maps run the whole pipeline but "
                "explain nothing. Use weights='imagenet' or a state_dict file for real maps.",
                stacklevel=2,
            )
    else:
        path = Path(weights_str)
        if not path.is_file():
            raise FileNotFoundError(
                f"weights {weights_str!r} is neither 'imagenet', 'random' nor an existing file"
            )
        model = build_architecture(arch)
        _load_state_dict_file(model, path, arch)
        identity = file_identity(path)

    _, resize, crop, interpolation = ARCH_TABLE[arch]
    model.eval()
    model.gradcam_fast_info = ModelInfo(
        arch=arch,
        weights=identity,
        mean=tuple(imagenet.transforms().mean),
        std=tuple(imagenet.transforms().std),
        categories=categories,
        resize_size=resize,
        crop_size=crop,
        interpolation=interpolation,
    )
    return model


def load_vgg(
    arch: str = "vgg19", weights: str | os.PathLike = "imagenet", *, seed: int = 0
) -> nn.Module:
    """`load_model` for a VGG (the name this package started with; kept as a thin alias)."""
    if not arch.startswith("vgg"):
        raise ValueError(f"load_vgg loads VGGs; use load_model({arch!r}, ...) for other CNNs")
    return load_model(arch, weights, seed=seed)
