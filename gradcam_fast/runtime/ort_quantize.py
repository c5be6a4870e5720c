"""int8 for ONNX Runtime: the body below the target layer quantized with its static quantizer.

The convolutions up to the target layer (19.6 of VGG19's 19.7 GMAC) become QLinearConv with
per-channel int8 weights and uint8 activations whose ranges come from calibration images; the
head above the target layer, its written-out backward and the target resolution keep float32
activations and gradients (int8 gradients would be meaningless). QOperator format after
`quant_pre_process`: measured here 2-3.6x faster than float32, while the QDQ format ran slower
than float32 on this CPU (issue 13).

The head's Linear weights (VGG19's first Linear alone is 392 MiB, read once per call: most of
the batch-1 time once the convolutions are int8) are then stored in int8 too, block-wise with a
float scale per HEAD_BLOCK_SIZE weights (ONNX Runtime's MatMulNBits, 8 bits, accuracy level 4:
each block of the float activations or gradients is quantized on the fly). Calibration plays no
part there, so unlike a static QGemm (which kept VGG19's top-1 class for 14 of 16 photos) it
moves the logits by about as much as the int8 body does (benchmarks/RESULTS.md).

On an x86 CPU without VNNI (AVX2 alone, or AVX-512 without VNNI) the convolution weights are
stored in 7 bits ([-64, 64], ONNX Runtime's `reduce_range`): there its uint8 x int8 kernels add
each pair of products in int16 (VPMADDUBSW), 2 x 255 x 127 overflows it and the sums saturate,
while 2 x 255 x 64 fits. Measured on an AVX2-only AMD EPYC (2026-12-07): with 8-bit weights a
trained tiny VGG's logits moved by 24% and a one-conv body's activations by 34% (validation
refused both files), within the int8 limits in 7 bits; VGG19 (random weights, 8 photos) kept
its maps better in 7 bits than in saturating 8 bits (held-out r 0.982 against 0.977). With VNNI
the sums are exact and 8 bits keep more (VGG19 r 0.990 on a Zen 4), so the CPU that makes the
file decides (`cpu_choice.int8_pair_sums_saturate`), and a session refuses a file with 8-bit
kernels on a CPU that would saturate them (`saturating_convs`).

Two callers: `export_onnx(..., precision="int8")` (`export.quantize`) and a session's int8 model
of a float32 file (`int8_cache`). The calibration images come from `io.calibration`.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import torch

from ..format.onnx_body import body_nodes
from ..format.options import check_calibration_method
from ..io.calibration import calibration_batches
from .cpu_choice import int8_pair_sums_saturate

__all__ = ["HEAD_BLOCK_SIZE", "SATURATION_FREE", "quantize_body", "quantize_head_weights",
           "saturating_convs"]  # fmt: skip

log = logging.getLogger(__name__)

HEAD_BLOCK_SIZE = 128  # head weights per float scale (MatMulNBits block size)
SATURATION_FREE = 64  # |int8 kernel weight| at most this: int16 pair sums of uint8 x int8 fit


def saturating_convs(path: str | Path) -> list[str]:
    """The int8 convolution kernels (int8 initializers of rank 4) of the ONNX file at `path`
    with a weight beyond +-SATURATION_FREE: ONNX Runtime's int8 convolutions saturate on them
    on an x86 CPU without VNNI (the module note)."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return [
        init.name
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.INT8
        and len(init.dims) == 4
        and np.abs(numpy_helper.to_array(init).astype(np.int16)).max() > SATURATION_FREE
    ]


def _gemms_as_matmuls(proto: onnx.ModelProto, body: set[str]) -> set[str]:
    """Each head Gemm with a constant weight (VGG's Linear layers) rewritten in place as MatMul
    (+ Add for a bias), the form ONNX Runtime's MatMulNBits quantizer takes. Returns the names
    of the Linear weights (both orientations) and of `channel_sums`, which is derived from one."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    weights = {"channel_sums"}  # GradCAMGraph's per-channel sums of the first Linear weight
    for index, node in enumerate(list(graph.node)):
        if node.op_type != "Gemm" or node.name in body or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            continue
        weight = inits[node.input[1]]
        weights.add(weight.name)  # the backward's MatMuls read it as it is
        if attrs.get("transB", 0):
            array = numpy_helper.to_array(weight).T
            weight = numpy_helper.from_array(np.ascontiguousarray(array), f"{weight.name}_t")
            graph.initializer.append(weight)
            weights.add(weight.name)
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes = [helper.make_node("MatMul", [node.input[0], weight.name], [product], node.name)]
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [product, node.input[2]], [node.output[0]], f"{node.name}_bias"
                )
            )
        graph.node.remove(node)
        for offset, new in enumerate(nodes):
            graph.node.insert(index + offset, new)
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    return weights


def quantize_head_weights(proto: onnx.ModelProto, body: set[str]) -> onnx.ModelProto:
    """The head's Linear weights (forward and written-out backward) stored in int8, block-wise
    (MatMulNBits, 8 bits, HEAD_BLOCK_SIZE, symmetric, accuracy level 4); see the module note.
    Other constant matrices (adaptive-pooling bins) stay float32."""
    root = logging.getLogger()
    handlers, root_level = list(root.handlers), root.level
    # that module calls logging.basicConfig(level=INFO) when imported: undo it for our users
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    root.handlers[:] = handlers
    root.setLevel(root_level)
    weights = _gemms_as_matmuls(proto, body)
    keep = sorted(
        node.name
        for node in proto.graph.node
        if node.op_type == "MatMul" and (node.name in body or node.input[1] not in weights)
    )
    quantizer_log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quantizer_log.level
    quantizer_log.setLevel(logging.WARNING)  # it logs every node at INFO
    try:
        quantizer = MatMulNBitsQuantizer(
            proto,
            bits=8,
            block_size=HEAD_BLOCK_SIZE,
            is_symmetric=True,
            accuracy_level=4,
            nodes_to_exclude=keep,
        )
        quantizer.process()
    finally:
        quantizer_log.setLevel(level)
    return quantizer.model.model


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader over the calibration batch."""

    def __init__(self, images: torch.Tensor, num_targets: int):
        self._batches = calibration_batches(images, num_targets)
        self._next = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._next, None)

    def rewind(self) -> None:
        self._next = iter(self._batches)


def quantize_body(
    proto: onnx.ModelProto,
    images: torch.Tensor,
    num_targets: int,
    method: str = "minmax",
    head_weights: bool = True,
) -> onnx.ModelProto:
    """`proto` (a float32 gradcam_fast graph) with its body statically quantized to int8,
    calibrated on `images` (the model's input format); every node above the target layer stays
    float32. Intermediate files live in a temporary folder that is always removed.

    `head_weights` also stores the head's Linear weights in int8 (quantize_head_weights); False
    keeps them float32 (benchmarks/RESULTS.md compares the two)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    check_calibration_method(method)
    calibrate = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    # the reader's base class comes with onnxruntime, imported here only
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(images, num_targets)
    with tempfile.TemporaryDirectory(prefix="gradcam_fast-int8-") as tmp:
        source, prepared, quantized = (Path(tmp) / n for n in ("f32.onnx", "pre.onnx", "q.onnx"))
        onnx.save(proto, source)
        # Shape inference and ORT's basic graph optimizations (constant folding, Conv+BatchNorm
        # fusion) first, as ONNX Runtime recommends; the prototype measured QOperator
        # after this step 2.35x (batch 1) and 3.57x (batch 8) faster than float32.
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        graph = onnx.load(prepared)
        body = body_nodes(graph)
        del graph
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                prepared,
                quantized,
                reader,
                quant_format=QuantFormat.QOperator,
                per_channel=True,
                reduce_range=int8_pair_sums_saturate(),  # 7-bit kernels there (module note)
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=sorted(body),
                calibrate_method=calibrate,
                calibration_providers=["CPUExecutionProvider"],
            )
        result = onnx.load(quantized)
    if head_weights:
        result = quantize_head_weights(result, body_nodes(result))
    log.info(
        "int8 ops: %s",
        Counter(n.op_type for n in result.graph.node if "Q" in n.op_type or "Bits" in n.op_type),
    )
    return result
