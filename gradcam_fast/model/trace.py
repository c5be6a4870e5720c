"""A classifier as a torch.fx graph: its layers by name, their shapes, and the target layer.

Every torchvision CNN traces with torch.fx. The tracer is torchvision's `NodePathTracer` (the
one behind `models.feature_extraction`), so layers have the names its documentation uses
(`features.35`, `layer4.1.relu_1`, `layer1.0.add`), but it traces through torchvision's
composite blocks (Conv2dNormActivation, SqueezeExcitation, StochasticDepth, ...) down to plain
torch.nn layers and functions, the ops `core/vjp.py` has rules for. A module name that is not a node
(`layer4`, `features`) names its last node, the block's output, as in torchvision.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import torch
from torch import fx, nn

__all__ = [
    "LayerInfo",
    "TracedModel",
    "UntraceableModelError",
    "ancestors",
    "default_target_node",
    "descendants",
    "layer_table",
    "resolve_target",
    "trace_model",
]

# Families whose last pre-pooling tensor is not what Grad-CAM should explain: SqueezeNet's
# classifier is a 1x1 convolution to the classes, so its default is the last Fire module.
_FAMILY_DEFAULTS = {"SqueezeNet": "features"}
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POOL_FUNCTIONS = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"}


class UntraceableModelError(TypeError):
    """torch.fx cannot trace the model (data-dependent control flow, unsupported Python)."""


@dataclass(frozen=True)
class LayerInfo:
    """One node of the traced graph: its name, what it runs and its output shape per image."""

    name: str
    op: str  # "Conv2d", "add", "mean", ...
    shape: tuple[int, ...] | None  # without the batch axis; None where not one tensor


@dataclass
class TracedModel:
    """`model` traced: the fx GraphModule (sharing the model's modules and parameters), each
    node's name, and the shapes at batch `batch` for `image_size` (a batch of 2 shows which
    axis is the batch)."""

    module: fx.GraphModule
    names: dict[fx.Node, str]
    image_size: int
    batch: int = 2

    @property
    def nodes(self) -> list[fx.Node]:
        return list(self.module.graph.nodes)

    def name_of(self, node: fx.Node) -> str:
        return self.names.get(node, node.name)

    def op_of(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.module.get_submodule(node.target)).__name__
        if node.op == "call_function":
            return getattr(node.target, "__name__", str(node.target))
        return str(node.target)

    def shape_of(self, node: fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if hasattr(meta, "shape") else None

    def output_node(self) -> fx.Node:
        out = next(n for n in self.nodes if n.op == "output")
        value = out.args[0]
        if not isinstance(value, fx.Node):
            raise ValueError(
                f"{type(self.module).__name__}'s forward returns {type(value).__name__}, not one "
                "logits tensor [B, num_classes]: gradcam_fast explains classifiers (for a model "
                "with several outputs, wrap it in a module that returns the class scores)"
            )
        return value


def trace_model(model: nn.Module, image_size: int = 224) -> TracedModel:
    """Trace `model` (in eval mode) into a graph of plain layers and functions, with shapes.

    Refuses a model torch.fx cannot trace, naming fx's reason and the remedies; and one whose
    output is not [B, num_classes] logits."""
    from torchvision.models.feature_extraction import NodePathTracer

    model.eval()
    # No leaf modules beyond torch.nn's own, math's functions called on traced sizes wrapped.
    tracer = NodePathTracer(leaf_modules=[], autowrap_modules=(math,))
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise UntraceableModelError(
            f"torch.fx cannot trace {type(model).__name__}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. Its forward probably branches on "
            "tensor values or calls code fx cannot follow. Remedies: move that code out of "
            "forward, wrap the offending function with torch.fx.wrap, or export the part of the "
            "network up to the classifier as its own module"
        ) from None
    module = fx.GraphModule(tracer.root, graph, class_name=type(model).__name__)
    traced = TracedModel(module, tracer.node_to_qualname, image_size)
    _propagate_shapes(traced, image_size)
    out = traced.output_node()
    shape = traced.shape_of(out)
    if shape is None or len(shape) != 2:
        raise ValueError(
            f"{type(model).__name__}'s output has shape {shape}, not [B, num_classes]: "
            "gradcam_fast explains classifiers whose last node returns the class scores"
        )
    return traced


def _propagate_shapes(traced: TracedModel, image_size: int) -> None:
    """Record each node's output shape at batch `traced.batch` (fake tensors: no memory, no
    compute)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.passes.shape_prop import ShapeProp

    shape = (traced.batch, 3, image_size, image_size)
    on_meta = any(p.is_meta for p in traced.module.parameters())
    try:
        if on_meta:  # a model built on the meta device (no weights): run it there
            ShapeProp(traced.module).propagate(torch.empty(shape, device="meta"))
        else:
            mode = FakeTensorMode(allow_non_fake_inputs=True)
            ShapeProp(traced.module, fake_mode=mode).propagate(mode.from_tensor(torch.empty(shape)))
    except Exception as exc:
        raise ValueError(
            f"image size {image_size} does not fit {type(traced.module).__name__}: "
            f"{str(exc).splitlines()[0]}"
        ) from None


def _is_pool(traced: TracedModel, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(traced.module.get_submodule(node.target), _POOLS)
    return node.op == "call_function" and traced.op_of(node) in _POOL_FUNCTIONS


def _per_image_size(traced: TracedModel, node: fx.Node) -> float:
    shape = traced.shape_of(node)
    return math.prod(shape[1:]) if shape else math.inf


def _feature_map(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1


def default_target_node(traced: TracedModel) -> fx.Node:
    """The last stage's output: the last feature map [B, C, H, W] with H*W > 1 before global
    pooling that is not itself a pooling (so `features.35` in VGG19, the output of `layer4` in
    ResNets, of `features` in ConvNeXt). SqueezeNet: the last Fire module (`features`)."""
    family = _FAMILY_DEFAULTS.get(type(traced.module).__name__)
    if family is not None:
        return resolve_target(traced, family)
    reaching = ancestors(traced.output_node())
    # What follows a global pooling without growing again (ConvNeXt's classifier runs
    # channels-last: [B, 1, 1, C]); a squeeze-excitation's scale times the map is a map again.
    pooled: set[fx.Node] = set()
    for node in traced.nodes:
        shape = traced.shape_of(node)
        is_global = shape is not None and len(shape) == 4 and shape[2] == shape[3] == 1
        if node in pooled or (is_global and _is_pool(traced, node)):
            size = math.prod(shape[1:]) if shape else 0
            pooled.update(u for u in node.users if _per_image_size(traced, u) <= size)
    for node in reversed(traced.nodes):
        if (
            node in reaching
            and node not in pooled
            and _feature_map(traced.shape_of(node))
            and not _is_pool(traced, node)
        ):
            return node
    raise ValueError(
        f"{type(traced.module).__name__} has no feature map [B, C, H, W] before its output "
        f"at image size {traced.image_size}: name a target layer, or use a larger image size"
    )


def _reachable(node: fx.Node, step) -> set[fx.Node]:
    seen, stack = {node}, [node]
    while stack:
        for nxt in step(stack.pop()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def ancestors(node: fx.Node) -> set[fx.Node]:
    """`node` and every node it depends on."""
    return _reachable(node, lambda n: n.all_input_nodes)


def descendants(node: fx.Node) -> set[fx.Node]:
    """`node` and every node that depends on it."""
    return _reachable(node, lambda n: n.users)


def resolve_target(traced: TracedModel, name: str | None) -> fx.Node:
    """The node `name` names: a node name, or a module path naming that module's last node;
    None: `default_target_node`. Refuses unknown names (listing close matches) and targets
    whose output is not a feature map [B, C, H, W]."""
    if name is None:
        return default_target_node(traced)
    by_name = {traced.name_of(n): n for n in traced.nodes if n.op not in ("placeholder", "output")}
    node = by_name.get(name)
    if node is None:
        inside = [n for n, label in ((n, traced.name_of(n)) for n in by_name.values())
                  if label.startswith(name + ".")]  # fmt: skip
        node = inside[-1] if inside else None
    if node is None:
        close = difflib.get_close_matches(name, list(by_name), n=6, cutoff=0.6)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(
            f"{type(traced.module).__name__} has no layer {name!r}{hint}. "
            "`gradcam-fast layers ARCH` lists every layer with its output shape"
        )
    shape = traced.shape_of(node)
    if shape is None or len(shape) != 4:
        raise ValueError(
            f"target layer {name!r} outputs {_shape_text(shape)}, not a "
            "feature map [B, C, H, W]: Grad-CAM weighs the channels of a convolutional layer's "
            "output; pick a layer before the global pooling"
        )
    if node not in ancestors(traced.output_node()):
        raise ValueError(f"target layer {name!r} does not reach the model's output")
    return node


def layer_table(traced: TracedModel) -> list[LayerInfo]:
    """Every node that can be a target or names an op, in execution order, with its shape."""
    return [
        LayerInfo(traced.name_of(n), traced.op_of(n), _per_image(traced.shape_of(n)))
        for n in traced.nodes
        if n.op in ("call_module", "call_function", "call_method")
    ]


def _per_image(shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
    return None if shape is None else shape[1:]


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "no single tensor" if shape is None else f"shape [B, {', '.join(map(str, shape[1:]))}]"
