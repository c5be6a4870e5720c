"""GradCAMGraph: one forward call that also returns the target layer's gradients, for any CNN.

The classifier is traced into a DAG (model/trace.py). The target node splits it: the body is every
node the head needs that does not depend on the target (it runs as the model runs it); the head
is every node that depends on the target. The head runs forward through its ops' rules (vjp.py),
keeping what each backward needs; then the VJPs run in reverse topological order from the
chosen logits to the target, summing gradients where a tensor feeds several nodes. Tensors the
head takes from the body (a residual's skip, a dense block's earlier features) enter as
constants with no gradient. No autograd and no hooks, so `torch.onnx.export` can trace it.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..format.metadata import ModelMetadata
from ..format.options import channel_weights_only_of
from ..model.loading import model_info
from ..model.trace import TracedModel, resolve_target, trace_model
from ..model.trace import ancestors as _ancestors
from ..model.trace import descendants as _descendants
from .vjp import rule_for, supported_ops

__all__ = ["GradCAMGraph", "UnsupportedOpError", "resolve_targets"]


class UnsupportedOpError(NotImplementedError):
    """An op between the target layer and the logits has no VJP rule (vjp.py)."""


def resolve_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class indices [B, K] from targets [B, K]: t >= 0 is a class, -r the r-th highest logit."""
    ranked = torch.topk(logits, logits.shape[1], dim=1).indices  # sorted, descending
    rank = (-targets - 1).clamp(min=0)
    return torch.where(targets >= 0, targets, ranked.gather(1, rank))


def _is_tensor_node(node: fx.Node) -> bool:
    return hasattr(node.meta.get("tensor_meta"), "shape")


def _is_tensor_tuple(node: fx.Node) -> bool:
    meta = node.meta.get("tensor_meta")
    return isinstance(meta, (tuple, list)) and not hasattr(meta, "shape") and bool(meta)


# Ops through which the spatial sum of a channel's gradient is unchanged: a max-pool routes each
# gradient to one winner, an average (over windows without padding, or a mean) splits it with
# weights that sum to 1, the rest move it. Between the target and the first Linear these make
# Grad-CAM's channel weights a per-channel sum of that Linear's weights.
_SUM_PRESERVING_MODULES = (
    nn.MaxPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Flatten,
    nn.Identity,
)
_SUM_PRESERVING_CALLS = {
    "max_pool2d",
    "adaptive_avg_pool2d",
    "flatten",
    "mean",
    "contiguous",
    "stochastic_depth",
}


class GradCAMGraph(nn.Module):
    """A classifier rewritten to return (logits, target_classes, activations, gradients) in one
    call. Shares parameters with `model` and puts it in eval mode (an inference graph).

    `target_layer`: a node or module name (`trace.resolve_target`); None: the last stage's
    output (`trace.default_target_node`). `image_size`: the size the shapes are checked at.
    `channel_weights_only=True` makes the channel-weights graph: it returns Grad-CAM's channel
    weights [B,K,C] (the spatial means of the gradients) instead of the gradients. When only
    pooling lies between the target and the first Linear (VGG's and ResNet's default targets),
    they come from that Linear's weights summed over each channel's positions, so its VJP is
    skipped. `gradients=False` is its deprecated spelling (a DeprecationWarning).
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None = None,
        num_targets: int = 1,
        gradients: bool | None = None,
        image_size: int = 224,
        *,
        channel_weights_only: bool = False,
    ):
        super().__init__()
        if num_targets < 1:
            raise ValueError(f"num_targets must be at least 1, got {num_targets}")
        self.info = model_info(model)  # where the network came from, for the metadata
        traced = trace_model(model, image_size)
        self.net = traced.module  # owns (shares) the model's modules and parameters
        target = resolve_target(traced, target_layer)
        self.target_layer = traced.name_of(target)
        self.num_targets = num_targets
        self.channel_weights_only = channel_weights_only_of(
            channel_weights_only, gradients, "GradCAMGraph"
        )
        self._plan(traced, target)
        self.num_classes = traced.shape_of(self._output)[1]
        self._shortcut, channel_sums = None, None
        if self.channel_weights_only:
            self._shortcut, channel_sums = self._channel_sums(traced, target)
        # the Linear whose per-channel weight sums give the channel weights, if any
        self.first_linear = None if self._shortcut is None else traced.name_of(self._shortcut)
        self.register_buffer("channel_sums", channel_sums, persistent=False)
        self.body_dtype = torch.float32
        self.eval()

    # --- planning: which nodes run where, which rule each head node uses

    def _plan(self, traced: TracedModel, target: fx.Node) -> None:
        nodes = traced.nodes
        self._target = target
        self._output = traced.output_node()
        reaching = _ancestors(self._output)
        head = (_descendants(target) & reaching) - {target}
        needed = {target} | {p for n in head for p in n.all_input_nodes if p not in head}
        body = set().union(*(_ancestors(n) for n in needed))
        self._body = [n for n in nodes if n in body]
        self._head = [n for n in nodes if n in head]
        self._head_set = head | {target}
        self._needed = needed
        self._rules: dict[fx.Node, Any] = {}
        self._picks: dict[fx.Node, tuple[fx.Node, int]] = {}  # getitem of a head tuple (chunk)
        for n in self._head:
            if n.target is operator.getitem and n.args[0] in head and _is_tensor_tuple(n.args[0]):
                self._picks[n] = (n.args[0], n.args[1])
                continue
            if n.op == "get_attr" or not (_is_tensor_node(n) or _is_tensor_tuple(n)):
                continue  # sizes and shape arithmetic: evaluated, no gradient
            rule = rule_for(n.op, self._op(n))
            if rule is None:
                raise UnsupportedOpError(
                    f"{traced.op_of(n)} at node {traced.name_of(n)!r} lies between the target "
                    f"layer {traced.name_of(target)!r} and the logits and has no VJP rule, so "
                    "its Grad-CAM would be wrong: refused. Supported ops: "
                    f"{', '.join(supported_ops())}. Pick a target layer after it (`gradcam-fast "
                    "layers`), or add a rule to gradcam_fast/core/vjp.py"
                )
            self._rules[n] = rule
        self._check_batch_axis(traced)

    def _check_batch_axis(self, traced: TracedModel) -> None:
        """Every head tensor keeps the batch as its first axis (the rules rely on it)."""
        for n in self._head:
            shape = traced.shape_of(n)
            if n in self._rules and shape is not None and shape[0] != traced.batch:
                raise UnsupportedOpError(
                    f"node {traced.name_of(n)!r} ({traced.op_of(n)}) moves the batch axis "
                    f"(shape {list(shape)} at batch {traced.batch}): no VJP rule handles that"
                )

    def _op(self, node: fx.Node) -> Any:
        return self.net.get_submodule(node.target) if node.op == "call_module" else node.target

    def _channel_sums(
        self, traced: TracedModel, target: fx.Node
    ) -> tuple[fx.Node | None, torch.Tensor | None]:
        """(the first Linear node, its weight summed per channel [out, C]) when only
        sum-preserving ops lie between the target and it, else (None, None)."""
        node = target
        while len(node.users) == 1:
            user = next(iter(node.users))
            op = self._op(user)
            if isinstance(op, nn.Linear) and len(traced.shape_of(user)) == 2:
                weight = op.weight.detach()
                channels = traced.shape_of(target)[1]
                if weight.shape[1] % channels:
                    return None, None
                return user, weight.reshape(weight.shape[0], channels, -1).sum(dim=-1)
            preserving = (
                isinstance(op, _SUM_PRESERVING_MODULES)
                if user.op == "call_module"
                else traced.op_of(user) in _SUM_PRESERVING_CALLS
            )
            if not preserving or user.all_input_nodes != [node]:
                return None, None
            node = user
        return None, None

    # --- the body in another precision (torch backend)

    def body_modules(self) -> list[nn.Module]:
        """The modules only the body runs (what a float16 or channels-last body converts)."""
        head = {n.target for n in self._head if n.op == "call_module"}
        body = {n.target for n in self._body if n.op == "call_module"} - head
        return [self.net.get_submodule(name) for name in sorted(body)]

    def set_body_dtype(self, dtype: torch.dtype) -> None:
        """Run the body in `dtype` (float16, bfloat16); the head always runs in float32."""
        for module in self.body_modules():
            module.to(dtype)
        self.body_dtype = dtype

    def metadata(self, image_size: int, **fields) -> ModelMetadata:
        """What a model of this graph records and a session relies on: the one place a
        `ModelMetadata` is built (by `export_onnx` and by the torch backend). `fields`: how it
        was exported (precision, input_format, maps, method, ...; ModelMetadata's defaults
        otherwise)."""
        return ModelMetadata(
            arch=self.info.arch,
            target_layer=self.target_layer,
            image_size=image_size,
            num_targets=self.num_targets,
            num_classes=self.num_classes,
            mean=tuple(self.info.mean),
            std=tuple(self.info.std),
            weights=self.info.weights,
            categories=tuple(self.info.categories),
            gradients=not self.channel_weights_only,  # the file's key for it (format unchanged)
            resize_size=self.info.resize_size,
            crop_size=self.info.crop_size,
            interpolation=self.info.interpolation,
            **fields,
        )

    # --- running

    def _call(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        args = fx.node.map_arg(node.args, env.__getitem__)
        kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
        if node.op == "call_module":
            return self.net.get_submodule(node.target)(*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            return _fetch(self.net, node.target)
        raise NotImplementedError(node.op)

    def _run_body(self, images: torch.Tensor) -> dict[fx.Node, Any]:
        env: dict[fx.Node, Any] = {}
        for node in self._body:
            if node.op == "placeholder":
                env[node] = images.to(self.body_dtype)
                continue
            value = self._call(node, env)
            if node.op == "get_attr" and torch.is_tensor(value) and value.is_floating_point():
                # a parameter outside the leaf modules (ConvNeXt's layer scale), which
                # set_body_dtype did not convert: in float32 it would promote the body back
                value = value.to(self.body_dtype)
            env[node] = value
        return env

    def run_body(self, images: torch.Tensor) -> torch.Tensor:
        """The body alone: the target's activations in the body's dtype (for profiling)."""
        return self._run_body(images)[self._target]

    def forward(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B,3,S,S] float, targets [B,K] int64 -> logits [B,N], target_classes [B,K],
        activations [B,C,h,w], gradients [B,K,C,h,w] (d logit_target / d activations), or
        with channel_weights_only the channel weights [B,K,C]."""
        env = self._run_body(images)
        # The body may run in float16 (see torch_backend); the head, forward and backward,
        # always runs in float32: it is a small part of the work, and float16 gradients would
        # underflow.
        for node in self._needed:
            value = env[node]
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                env[node] = value.float()
        activations = env[self._target]
        saved: dict[fx.Node, Any] = {}
        for node in self._head:
            rule = self._rules.get(node)
            if node in self._picks:
                parent, index = self._picks[node]
                env[node] = env[parent][index]
                continue
            if rule is None:
                env[node] = self._call(node, env)
                continue
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            op = self._op(node)
            env[node], saved[node] = rule.forward(op, *args, **kwargs)
        logits = env[self._output]
        classes = resolve_targets(logits, targets)

        grads: dict[fx.Node, Any] = {}
        stop = self._shortcut
        self._seed(grads, logits, classes, stop)
        order = [n for n in reversed(self._head) if n in self._rules or n in self._picks]
        if stop is not None:  # channel weights through the per-channel sums: stop at the Linear
            after = _descendants(stop)
            order = [n for n in order if n in after and n is not stop]
        for node in order:
            g = grads.pop(node, None)
            if g is None:
                continue
            if node in self._picks:  # a part of a tuple: its gradient goes to that part
                parent, index = self._picks[node]
                parts = grads.setdefault(parent, {})
                parts[index] = g if index not in parts else parts[index] + g
                continue
            self._backward(node, g, saved[node], grads)
        if stop is not None:
            h, w = activations.shape[-2:]
            if stop is self._output:  # the Linear gives the logits: its classes' rows
                sums = F.embedding(classes, self.channel_sums)
            else:
                sums = grads[stop] @ self.channel_sums
            return logits, classes, activations, sums / (h * w)
        g = grads[self._target]
        if self.channel_weights_only:
            return logits, classes, activations, g.mean(dim=(-2, -1))
        return logits, classes, activations, g

    def _seed(
        self, grads: dict, logits: torch.Tensor, classes: torch.Tensor, stop: fx.Node | None
    ) -> None:
        """d logit_c / d logits; at a final Linear, directly d logit_c / d its input: the
        classes' rows of its weight (a gather, not a [K, N] @ [N, in] product)."""
        out = self._output
        if out is stop:
            return  # the channel-weights shortcut takes the classes' rows itself
        op = self._op(out)
        if isinstance(op, nn.Linear) and out.op == "call_module" and out.args[0] in self._head_set:
            grads[out.args[0]] = F.embedding(classes, op.weight)
            return
        grads[out] = F.one_hot(classes, logits.shape[1]).to(logits.dtype)

    def _backward(self, node: fx.Node, g: Any, saved: Any, grads: dict) -> None:
        """Run `node`'s VJP and add the gradients of its inputs that depend on the target."""
        needs = fx.node.map_aggregate(
            node.args, lambda a: isinstance(a, fx.Node) and a in self._head_set
        )
        rule = self._rules[node]
        if isinstance(g, dict):  # a tuple output (chunk): one gradient per part used
            g = tuple(g.get(i) for i in range(len(saved[1])))
        ins = rule.vjp(self._op(node), g, saved, needs)
        _accumulate(node.args, ins, needs, grads)


def _fetch(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _accumulate(args: Any, ins: Any, needs: Any, grads: dict) -> None:
    """Add each gradient in `ins` to `grads` at the node in the same place of `args`."""
    if isinstance(args, fx.Node):
        if needs and ins is not None:
            grads[args] = ins if args not in grads or grads[args] is None else grads[args] + ins
        return
    if isinstance(args, (list, tuple)):
        for a, i, n in zip(args, ins, needs, strict=False):
            _accumulate(a, i, n, grads)
