"""The names the command line offers, importable without torch: CNN archs and CAM methods.

`gradcam-fast --help` builds every subcommand's parser from these; the modules that implement
them (`models`, `methods`) take their names from here or are checked against them in the tests.
"""

from __future__ import annotations

__all__ = ["ARCHS", "ARCH_TABLE", "EXPORTABLE_METHODS", "METHOD_NAMES", "TRANSFORMER_PREFIXES"]

# Every torchvision CNN: arch name -> (weights enum name, resize, crop, interpolation) of its
# default ImageNet weights' preprocessing (Resize(resize) + CenterCrop(crop)); the builder is
# torchvision.models.get_model(arch). Names only: torchvision is imported when a model is built,
# not by every importer of this module (importing it adds about 160 MiB of RSS to a process
# that only runs sessions). tests/test_models.py checks this table against torchvision's
# registry. The transformers (vit_*, swin_*, maxvit_t) are not CNNs and are refused for now.
ARCH_TABLE: dict[str, tuple[str, int, int, str]] = {
    "alexnet": ("AlexNet_Weights", 256, 224, "bilinear"),
    "convnext_base": ("ConvNeXt_Base_Weights", 232, 224, "bilinear"),
    "convnext_large": ("ConvNeXt_Large_Weights", 232, 224, "bilinear"),
    "convnext_small": ("ConvNeXt_Small_Weights", 230, 224, "bilinear"),
    "convnext_tiny": ("ConvNeXt_Tiny_Weights", 236, 224, "bilinear"),
    "densenet121": ("DenseNet121_Weights", 256, 224, "bilinear"),
    "densenet161": ("DenseNet161_Weights", 256, 224, "bilinear"),
    "densenet169": ("DenseNet169_Weights", 256, 224, "bilinear"),
    "densenet201": ("DenseNet201_Weights", 256, 224, "bilinear"),
    "efficientnet_b0": ("EfficientNet_B0_Weights", 256, 224, "bicubic"),
    "efficientnet_b1": ("EfficientNet_B1_Weights", 255, 240, "bilinear"),
    "efficientnet_b2": ("EfficientNet_B2_Weights", 288, 288, "bicubic"),
    "efficientnet_b3": ("EfficientNet_B3_Weights", 320, 300, "bicubic"),
    "efficientnet_b4": ("EfficientNet_B4_Weights", 384, 380, "bicubic"),
    "efficientnet_b5": ("EfficientNet_B5_Weights", 456, 456, "bicubic"),
    "efficientnet_b6": ("EfficientNet_B6_Weights", 528, 528, "bicubic"),
    "efficientnet_b7": ("EfficientNet_B7_Weights", 600, 600, "bicubic"),
    "efficientnet_v2_l": ("EfficientNet_V2_L_Weights", 480, 480, "bicubic"),
    "efficientnet_v2_m": ("EfficientNet_V2_M_Weights", 480, 480, "bilinear"),
    "efficientnet_v2_s": ("EfficientNet_V2_S_Weights", 384, 384, "bilinear"),
    "googlenet": ("GoogLeNet_Weights", 256, 224, "bilinear"),
    "inception_v3": ("Inception_V3_Weights", 342, 299, "bilinear"),
    "mnasnet0_5": ("MNASNet0_5_Weights", 256, 224, "bilinear"),
    "mnasnet0_75": ("MNASNet0_75_Weights", 232, 224, "bilinear"),
    "mnasnet1_0": ("MNASNet1_0_Weights", 256, 224, "bilinear"),
    "mnasnet1_3": ("MNASNet1_3_Weights", 232, 224, "bilinear"),
    "mobilenet_v2": ("MobileNet_V2_Weights", 232, 224, "bilinear"),
    "mobilenet_v3_large": ("MobileNet_V3_Large_Weights", 232, 224, "bilinear"),
    "mobilenet_v3_small": ("MobileNet_V3_Small_Weights", 256, 224, "bilinear"),
    "regnet_x_16gf": ("RegNet_X_16GF_Weights", 232, 224, "bilinear"),
    "regnet_x_1_6gf": ("RegNet_X_1_6GF_Weights", 232, 224, "bilinear"),
    "regnet_x_32gf": ("RegNet_X_32GF_Weights", 232, 224, "bilinear"),
    "regnet_x_3_2gf": ("RegNet_X_3_2GF_Weights", 232, 224, "bilinear"),
    "regnet_x_400mf": ("RegNet_X_400MF_Weights", 232, 224, "bilinear"),
    "regnet_x_800mf": ("RegNet_X_800MF_Weights", 232, 224, "bilinear"),
    "regnet_x_8gf": ("RegNet_X_8GF_Weights", 232, 224, "bilinear"),
    "regnet_y_128gf": ("RegNet_Y_128GF_Weights", 384, 384, "bicubic"),
    "regnet_y_16gf": ("RegNet_Y_16GF_Weights", 232, 224, "bilinear"),
    "regnet_y_1_6gf": ("RegNet_Y_1_6GF_Weights", 232, 224, "bilinear"),
    "regnet_y_32gf": ("RegNet_Y_32GF_Weights", 232, 224, "bilinear"),
    "regnet_y_3_2gf": ("RegNet_Y_3_2GF_Weights", 232, 224, "bilinear"),
    "regnet_y_400mf": ("RegNet_Y_400MF_Weights", 232, 224, "bilinear"),
    "regnet_y_800mf": ("RegNet_Y_800MF_Weights", 232, 224, "bilinear"),
    "regnet_y_8gf": ("RegNet_Y_8GF_Weights", 232, 224, "bilinear"),
    "resnet101": ("ResNet101_Weights", 232, 224, "bilinear"),
    "resnet152": ("ResNet152_Weights", 232, 224, "bilinear"),
    "resnet18": ("ResNet18_Weights", 256, 224, "bilinear"),
    "resnet34": ("ResNet34_Weights", 256, 224, "bilinear"),
    "resnet50": ("ResNet50_Weights", 232, 224, "bilinear"),
    "resnext101_32x8d": ("ResNeXt101_32X8D_Weights", 232, 224, "bilinear"),
    "resnext101_64x4d": ("ResNeXt101_64X4D_Weights", 232, 224, "bilinear"),
    "resnext50_32x4d": ("ResNeXt50_32X4D_Weights", 232, 224, "bilinear"),
    "shufflenet_v2_x0_5": ("ShuffleNet_V2_X0_5_Weights", 256, 224, "bilinear"),
    "shufflenet_v2_x1_0": ("ShuffleNet_V2_X1_0_Weights", 256, 224, "bilinear"),
    "shufflenet_v2_x1_5": ("ShuffleNet_V2_X1_5_Weights", 232, 224, "bilinear"),
    "shufflenet_v2_x2_0": ("ShuffleNet_V2_X2_0_Weights", 232, 224, "bilinear"),
    "squeezenet1_0": ("SqueezeNet1_0_Weights", 256, 224, "bilinear"),
    "squeezenet1_1": ("SqueezeNet1_1_Weights", 256, 224, "bilinear"),
    "vgg11": ("VGG11_Weights", 256, 224, "bilinear"),
    "vgg11_bn": ("VGG11_BN_Weights", 256, 224, "bilinear"),
    "vgg13": ("VGG13_Weights", 256, 224, "bilinear"),
    "vgg13_bn": ("VGG13_BN_Weights", 256, 224, "bilinear"),
    "vgg16": ("VGG16_Weights", 256, 224, "bilinear"),
    "vgg16_bn": ("VGG16_BN_Weights", 256, 224, "bilinear"),
    "vgg19": ("VGG19_Weights", 256, 224, "bilinear"),
    "vgg19_bn": ("VGG19_BN_Weights", 256, 224, "bilinear"),
    "wide_resnet101_2": ("Wide_ResNet101_2_Weights", 232, 224, "bilinear"),
    "wide_resnet50_2": ("Wide_ResNet50_2_Weights", 232, 224, "bilinear"),
}
ARCHS: dict[str, str] = {name: row[0] for name, row in ARCH_TABLE.items()}
# Transformers in torchvision's registry: refused with a clear message (their token
# activations need a reshape to a grid, a later step).
TRANSFORMER_PREFIXES = ("vit_", "swin_", "maxvit")

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
# eigendecomposition (torch.linalg.eigh) has no ONNX operator (export/maps.py).
EXPORTABLE_METHODS = METHOD_NAMES[:-1]
