"""Grad-CAM for VGG-family CNNs at the cost of one forward pass, as an ONNX model."""

from .export import export_onnx
from .graph import GradCAMGraph
from .models import load_vgg
from .reference import eager_gradcam
from .result import GradCAMResult
from .runtime import GradCAMSession

__version__ = "0.1.0"
__all__ = [
    "GradCAMGraph",
    "GradCAMResult",
    "GradCAMSession",
    "eager_gradcam",
    "export_onnx",
    "load_vgg",
]
