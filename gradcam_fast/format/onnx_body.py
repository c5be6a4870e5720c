"""The body of an exported graph: the nodes below the target layer, which int8 and float16 convert.

Every node the `activations` output depends on is the body; the head above the target, its
written-out backward and the target resolution are the rest, kept float32 by every lower
precision (`export.float16`, `runtime.ort_quantize`, `runtime.ov_quantize`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx

__all__ = ["body_nodes"]


def body_nodes(proto: onnx.ModelProto) -> set[str]:
    """Names of the nodes the `activations` output depends on: the body below the target."""
    producers = {out: node for node in proto.graph.node for out in node.output}
    body, stack = set(), ["activations"]
    while stack:
        node = producers.get(stack.pop())
        if node is not None and node.name not in body:
            body.add(node.name)
            stack.extend(node.input)
    return body
