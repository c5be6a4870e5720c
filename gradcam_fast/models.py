"""Loading torchvision VGG models and the facts about them that export and preprocessing need."""

from __future__ import annotations

import hashlib
import os
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .catalog import ARCHS

__all__ = [
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ModelInfo",
    "default_target_layer",
    "feature_layer_names",
    "load_vgg",
    "model_info",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_warned_random: set[str] = set()


@dataclass(frozen=True)
class ModelInfo:
    """What an exported model records about where its network came from."""

    arch: str = "vgg"  # "vgg19", ... or "vgg" for a caller's own VGG instance
    weights: str = "unknown"  # "imagenet:<enum name>", "file:<sha256 prefix>", "random:seed=<n>"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    categories: tuple[str, ...] = field(default=(), repr=False)


def model_info(model: nn.Module) -> ModelInfo:
    """The `ModelInfo` that `load_vgg` attached to `model`, or a generic one."""
    return getattr(model, "gradcam_fast_info", None) or ModelInfo()


def feature_layer_names(model: nn.Module) -> list[str]:
    """Every layer of `model.features` by its module name (`features.0`, ...)."""
    return [f"features.{i}" for i in range(len(model.features))]


def default_target_layer(model: nn.Module) -> str:
    """The last layer before the final max-pool of `features` (`features.35` in VGG19)."""
    feats = list(model.features)
    last_pool = max((i for i, m in enumerate(feats) if isinstance(m, nn.MaxPool2d)), default=None)
    if last_pool is None or last_pool == 0:
        return f"features.{len(feats) - 1}"
    return f"features.{last_pool - 1}"


def file_identity(path: Path) -> str:
    """A short content hash naming a weights file in metadata and cache keys."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"file:{digest.hexdigest()[:16]}"


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


def load_vgg(
    arch: str = "vgg19", weights: str | os.PathLike = "imagenet", *, seed: int = 0
) -> nn.Module:
    """Build a torchvision VGG in eval mode with `weights`: "imagenet", a state_dict path, or
    "random" (seeded with `seed`).

    The returned model carries a `ModelInfo` (`model.gradcam_fast_info`) that export records in
    the ONNX metadata: arch, weights identity, mean/std and class names.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
    from torchvision import models as tvm

    builder = getattr(tvm, arch)
    imagenet = getattr(tvm, ARCHS[arch]).DEFAULT
    categories = tuple(imagenet.meta["categories"])
    weights_str = os.fspath(weights)

    if weights_str == "imagenet":
        model = builder(weights=None)
        try:
            state = imagenet.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:
            raise RuntimeError(
                f"could not load torchvision's ImageNet weights for {arch} ({imagenet.url}): "
                f"{exc}. Without network access, pass weights=<path to a state_dict file> "
                "(CLI: --weights FILE) or weights='random' (untrained, for testing the pipeline)."
            ) from exc
        model.load_state_dict(state)
        identity = f"imagenet:{imagenet}"
    elif weights_str == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = builder(weights=None)
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
        model = builder(weights=None)
        _load_state_dict_file(model, path, arch)
        identity = file_identity(path)

    model.eval()
    model.gradcam_fast_info = ModelInfo(
        arch=arch,
        weights=identity,
        mean=tuple(imagenet.transforms().mean),
        std=tuple(imagenet.transforms().std),
        categories=categories,
    )
    return model
