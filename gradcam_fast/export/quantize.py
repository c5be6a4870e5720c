"""int8 export: `export_onnx(..., precision="int8", calibration=...)`'s options checked, its
calibration set read (`io.calibration`) and the graph's body quantized for ONNX Runtime
(`runtime.ort_quantize`, which a session's int8 of a float32 file uses too).

The model is then judged against the float32 eager reference with `check.compare.LIMITS["int8"]`
(map similarity, not 1e-4), on calibration images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..format.options import check_calibration_method
from ..io.calibration import MIN_CALIBRATION_IMAGES, calibration_images
from ..io.images import preprocessing_of
from ..runtime.ort_quantize import quantize_body

if TYPE_CHECKING:
    import torch
    from onnx import ModelProto

    from ..model.loading import ModelInfo

__all__ = ["VALIDATE_IMAGES", "quantize_for_export"]

VALIDATE_IMAGES = 8  # calibration images the exported int8 model is validated on


def quantize_for_export(
    proto: ModelProto,
    calibration,
    method: str,
    image_size: int,
    num_targets: int,
    info: ModelInfo,
    raw_pixels: bool,
) -> tuple[ModelProto, dict, torch.Tensor]:
    """export_onnx's hook for precision "int8" (export_precision has refused any other asked at
    the same time): checks the options, reads the calibration set, quantizes; returns
    the model, its metadata fields and the images to validate it on."""
    if calibration is None:
        raise ValueError(
            "precision='int8' needs calibration images: a folder of image files or a tensor of "
            f"preprocessed images (at least {MIN_CALIBRATION_IMAGES})"
        )
    check_calibration_method(method)
    images = calibration_images(
        calibration, image_size, info.mean, info.std, raw_pixels, preprocessing_of(info)
    )
    proto = quantize_body(proto, images, num_targets, method)
    fields = {"calibration_method": method, "calibration_images": len(images)}
    return proto, fields, images[:VALIDATE_IMAGES]
