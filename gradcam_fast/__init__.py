"""Grad-CAM for CNNs (every CNN of torchvision's registry, or your own) at the cost of one
forward pass, as an ONNX model.

The public names are imported on first use (PEP 562), so a service that only runs sessions
does not load the exporter (onnx, onnxscript) and `gradcam-fast --help` starts quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = [
    "GradCAMGraph",
    "GradCAMResult",
    "GradCAMSession",
    "eager_gradcam",
    "export_onnx",
    "load_model",
    "load_vgg",
]

# public name -> the module that defines it
_WHERE = {
    "GradCAMGraph": "core.graph",
    "GradCAMResult": "format.result",
    "GradCAMSession": "runtime.session",
    "eager_gradcam": "check.reference",
    "export_onnx": "export.onnx_export",
    "load_model": "model.loading",
    "load_vgg": "model.loading",
}

if TYPE_CHECKING:
    from .check.reference import eager_gradcam
    from .core.graph import GradCAMGraph
    from .export.onnx_export import export_onnx
    from .format.result import GradCAMResult
    from .model.loading import load_model, load_vgg
    from .runtime.session import GradCAMSession


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'gradcam_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
