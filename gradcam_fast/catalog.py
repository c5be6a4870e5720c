"""The names the command line offers, importable without torch: VGG archs and CAM methods.

`gradcam-fast --help` builds every subcommand's parser from these; the modules that implement
them (`models`, `methods`) take their names from here or are checked against them in the tests.
"""

from __future__ import annotations

__all__ = ["ARCHS", "EXPORTABLE_METHODS", "METHOD_NAMES"]

# arch name -> torchvision weights enum name; the builder is torchvision.models.<arch>.
# Names only: torchvision is imported when a model is built, not by every importer of this
# module (importing it adds about 160 MiB of RSS to a process that only runs sessions).
ARCHS: dict[str, str] = {
    "vgg11": "VGG11_Weights",
    "vgg13": "VGG13_Weights",
    "vgg16": "VGG16_Weights",
    "vgg19": "VGG19_Weights",
    "vgg11_bn": "VGG11_BN_Weights",
    "vgg13_bn": "VGG13_BN_Weights",
    "vgg16_bn": "VGG16_BN_Weights",
    "vgg19_bn": "VGG19_BN_Weights",
}

# The keys of `methods.METHODS`, in its order (pytorch-grad-cam's names, lower-cased).
METHOD_NAMES = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "gradcamelementwise",
    "layercam",
    "eigencam",
)
# The methods `export_onnx(..., maps=True)` can compute inside the graph: all but eigencam, whose
# eigendecomposition (torch.linalg.eigh) has no ONNX operator (maps.py).
EXPORTABLE_METHODS = METHOD_NAMES[:-1]
