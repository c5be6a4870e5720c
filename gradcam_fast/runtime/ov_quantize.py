"""int8 for OpenVINO: NNCF post-training quantization of the float32 ONNX file.

ONNX Runtime's int8 file (QLinearConv, QOperator format) cannot be read by OpenVINO, so OpenVINO's
int8 model is made from the float32 file by NNCF (its ONNX backend): QuantizeLinear /
DequantizeLinear pairs around the body's convolutions, calibrated on the same photos as
ONNX Runtime's int8 (`io.calibration`). Every node outside `format.onnx_body.body_nodes`
(the head, its written-out backward, the target resolution, the in-graph maps) is in NNCF's
ignored scope: activations and gradients above the target layer stay float32 (and so do the
head's Linear weights, unless `head_weights=True`). The result is
still one .onnx file with the gradcam_fast metadata (precision "int8"), which OpenVINO turns into
int8 kernels and which ONNX Runtime can run too (QDQ; benchmarks/RESULTS.md compares).
"""

from __future__ import annotations

import logging

import onnx
import torch

from ..format.onnx_body import body_nodes
from ..io.calibration import calibration_batches

__all__ = ["NNCF_INSTALL", "quantize_with_nncf"]

NNCF_INSTALL = "pip install 'gradcam_fast[openvino]' (or pip install nncf)"


def _import_nncf():
    try:
        import nncf
    except ImportError as exc:
        from .openvino_backend import BackendNotInstalled

        raise BackendNotInstalled(
            f"OpenVINO's int8 needs NNCF, which is not installed here ({exc}): {NNCF_INSTALL}"
        ) from None
    return nncf


def quantize_with_nncf(
    proto: onnx.ModelProto, images: torch.Tensor, num_targets: int, head_weights: bool = False
) -> onnx.ModelProto:
    """`proto` (a float32 gradcam_fast graph) with its body quantized to int8 by NNCF,
    calibrated on `images` (the model's input format); metadata_props are kept as they were
    (`int8_cache` records the precision).

    `head_weights`: also store the head's Linear weights in int8 (NNCF weight compression,
    per output channel, asymmetric; the activations and gradients stay float32), as ONNX
    Runtime's int8 does with MatMulNBits. Off by default: the measured configuration (and the
    issue's) keeps them float32; at batch 1 reading VGG19's 470 MB of float32 head weights is
    a large part of an int8 call, so it may pay, but it has not been timed on VGG19 yet."""
    nncf = _import_nncf()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    nncf_log = logging.getLogger("nncf")
    nncf_level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # NNCF logs every node it leaves out at INFO
    body = body_nodes(proto)
    ignored = [n.name for n in proto.graph.node if n.name not in body]
    batches = calibration_batches(images, num_targets)
    try:
        quantized = nncf.quantize(
            proto,
            nncf.Dataset(batches),
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        )
        if head_weights:  # the body's convolutions are quantized already; MatMul/Gemm only
            quantized = nncf.compress_weights(quantized, mode=nncf.CompressWeightsMode.INT8_ASYM)
    finally:
        nncf_log.setLevel(nncf_level)
        root.handlers[:] = handlers
        root.setLevel(level)
    return quantized
