"""float16 export (precision='float16', for GPUs): the body below the target in float16, the rest float32."""

from __future__ import annotations

import warnings

import onnx

from ..format.onnx_body import body_nodes

__all__ = ["to_float16"]


def to_float16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The body (every node the `activations` output depends on) to float16; the head, target
    resolution and the written-out backward stay float32, with casts at the boundary."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    body = body_nodes(proto)
    head = [node.name for node in proto.graph.node if node.name not in body]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_float_to_float16(proto, keep_io_types=True, node_block_list=head)
