"""eager_gradcam, the eager reference: Grad-CAM the way it is taught (a tap on the target +
backward). What every fast path is checked against, and the speed baseline (the one name for
it: "eager reference"; benchmarks/ time it as the `eager_hook` contender).

Independent of the code it checks: it shares no target resolution, rule or graph with
model/trace.py, core/graph.py or core/vjp.py. The model is traced by torchvision's own
`NodePathTracer` and a tap is spliced in after the target node, so a module called twice
(ResNet's BasicBlock calls `self.relu` twice: `layer4.1.relu`, `layer4.1.relu_1`) and a
functional node (DenseNet's `F.relu`, ResNet's `add`) are targets like any module. The tap keeps
the activations and hands the rest of the net a copy, so an in-place ReLU after the target
cannot overwrite them; the gradient of that copy is d logit / d activations. The unmodified
model's modules run as they are, parameters requiring grad, one full `backward()` per target
slot.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Sequence

import numpy as np
import torch
from torch import fx, nn

from ..cams.postprocess import gradcam_lowres
from ..format.inputs import as_image_batch, as_targets
from ..format.result import GradCAMResult

__all__ = ["eager_gradcam"]


class _Tap(nn.Module):
    """Keeps the target's output and passes on a copy whose gradient it records."""

    def __init__(self) -> None:
        super().__init__()
        self.activations: torch.Tensor | None = None
        self.gradients: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.activations = x.detach().clone()
        # A frozen network's activations need no gradient: start the backward here instead.
        # The copy is never a leaf, so that an in-place op after the target (DenseNet's
        # F.relu(features, inplace=True)) may modify it; a hook registered before an in-place
        # op receives the gradient with respect to the value before it, the target's.
        source = x if x.requires_grad else x.detach().requires_grad_()
        copy = source.clone()
        copy.register_hook(lambda g: self.gradients.append(g.detach().clone()))
        return copy


# model -> {target name or None: the tapped GraphModule}: tracing costs tens of ms per call,
# which would otherwise be counted in the baseline's timings
_TAPPED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tapped(model: nn.Module, target_layer: str | None, image_size: int) -> fx.GraphModule:
    cache = _TAPPED.setdefault(model, {})
    key = target_layer or ("default", image_size)
    module = cache.get(key)
    if module is None or not _current(module, model):
        module = cache[key] = _splice_tap(model, target_layer, image_size)
    return module


def _current(module: fx.GraphModule, model: nn.Module) -> bool:
    """Whether the tapped graph still runs `model`'s modules (none was replaced since)."""
    try:
        return all(
            module.get_submodule(n.target) is model.get_submodule(n.target)
            for n in module.graph.nodes
            if n.op == "call_module" and n.target != "gradcam_tap"
        )
    except AttributeError:
        return False


def _splice_tap(model: nn.Module, target_layer: str | None, image_size: int) -> fx.GraphModule:
    from torchvision.models.feature_extraction import NodePathTracer

    tracer = NodePathTracer(leaf_modules=[], autowrap_modules=(math,))
    # Another library's hooks on a block (TorchCAM's, pytorch-grad-cam's) would run on fx's
    # proxies while tracing: set them aside for the trace; the traced graph runs them again.
    hooks = [(m, m._forward_hooks.copy(), m._forward_pre_hooks.copy()) for m in model.modules()]
    try:
        for m, _, _ in hooks:
            m._forward_hooks.clear()
            m._forward_pre_hooks.clear()
        graph = tracer.trace(model)
    finally:
        for m, forward, pre in hooks:
            m._forward_hooks.update(forward)
            m._forward_pre_hooks.update(pre)
    names = {node: tracer.node_to_qualname.get(node, node.name) for node in graph.nodes}
    if target_layer is None:
        from ..model.layer_names import default_target_layer  # the documented default, by name only

        target_layer = default_target_layer(model, image_size)
    # torchvision's rule (create_feature_extractor): the last node named `target_layer` or
    # inside the module of that name
    pattern = re.compile(rf"^{re.escape(target_layer)}(\.|$)")
    matches = [n for n in graph.nodes if n.op not in ("placeholder", "output")
               and pattern.match(names[n])]  # fmt: skip
    if not matches:
        raise ValueError(f"{type(model).__name__} has no layer {target_layer!r}")
    target = matches[-1]
    module = fx.GraphModule(tracer.root, graph)
    module.add_submodule("gradcam_tap", _Tap())
    with module.graph.inserting_after(target):
        tap = module.graph.call_module("gradcam_tap", (target,))
    target.replace_all_uses_with(tap, delete_user_cb=lambda user: user is not tap)
    module.recompile()
    return module


def eager_gradcam(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    targets: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    target_layer: str | None = None,
) -> GradCAMResult:
    """Grad-CAM by autograd on the unmodified model: the target's output tapped (see the module
    docstring) and one `backward()` of the summed batch scores per target slot, parameters left
    requiring grad.

    Runs on the model's device. `targets` takes the forms `GradCAMSession` takes; K is taken from
    them (None means the predicted class, K = 1). `target_layer`: a node or module name as
    `gradcam-fast layers` lists them; None: the model's default target. Puts the model in eval
    mode.
    """
    model.eval()
    device = next(model.parameters()).device
    x = as_image_batch(images, device=device)
    module = _tapped(model, target_layer, x.shape[-1])
    tap: _Tap = module.gradcam_tap
    tap.activations, tap.gradients = None, []
    try:
        with torch.enable_grad():
            logits = module(x)
            num_classes = logits.shape[1]
            t = as_targets(targets, x.shape[0], None, num_classes).to(device)
            ranked = torch.topk(logits.detach(), num_classes, dim=1).indices
            classes = torch.where(t >= 0, t, ranked.gather(1, (-t - 1).clamp(min=0)))
            scores = logits.gather(1, classes)  # [B, K]
            for k in range(classes.shape[1]):
                model.zero_grad(set_to_none=True)
                scores[:, k].sum().backward(retain_graph=k < classes.shape[1] - 1)
        activations, gradients = tap.activations, torch.stack(tap.gradients, dim=1)
    finally:
        tap.activations, tap.gradients = None, []
        model.zero_grad(set_to_none=True)

    lowres = gradcam_lowres(activations, gradients)  # gradients: [B, K, C, h, w]
    return GradCAMResult.from_lowres(
        lowres,
        tuple(x.shape[-2:]),
        target_classes=classes,
        logits=logits.detach(),
        activations=activations,
        gradients=gradients,
    )
