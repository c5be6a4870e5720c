"""eager_gradcam: Grad-CAM the way it is taught (hooks + backward). The oracle and the baseline."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .graph import resolve_target_layer, resolve_targets
from .inputs import as_image_batch, as_targets
from .postprocess import gradcam_lowres
from .result import GradCAMResult

__all__ = ["eager_gradcam"]


def eager_gradcam(
    model: nn.Module,
    images: torch.Tensor | np.ndarray,
    targets: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    target_layer: str | None = None,
) -> GradCAMResult:
    """Grad-CAM with a forward hook on the target layer, a gradient hook on its output, and one
    `backward()` of the summed batch scores per target slot, parameters left requiring grad.

    Runs on the model's device. `targets` takes the forms `GradCAMSession` takes; K is taken from
    them (None means the predicted class, K = 1). Puts the model in eval mode.
    """
    _, index = resolve_target_layer(model, target_layer)
    layer = model.features[index]
    device = next(model.parameters()).device
    x = as_image_batch(images, device=device)
    model.eval()
    store: dict[str, list[torch.Tensor]] = {"activations": [], "gradients": []}

    def save_gradient(grad: torch.Tensor) -> None:
        store["gradients"].append(grad.detach().clone())

    def forward_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        # Clone now: with an in-place ReLU after a conv target, `output` is overwritten later.
        store["activations"].append(output.detach().clone())
        output.register_hook(save_gradient)

    handle = layer.register_forward_hook(forward_hook)
    try:
        with torch.enable_grad():
            logits = model(x)
            num_classes = logits.shape[1]
            t = as_targets(targets, x.shape[0], None, num_classes).to(device)
            classes = resolve_targets(logits.detach(), t)
            scores = logits.gather(1, classes)  # [B, K]
            for k in range(classes.shape[1]):
                model.zero_grad(set_to_none=True)
                scores[:, k].sum().backward(retain_graph=k < classes.shape[1] - 1)
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)

    activations = store["activations"][0]
    gradients = torch.stack(store["gradients"], dim=1)  # [B, K, C, h, w]
    lowres = gradcam_lowres(activations, gradients)
    return GradCAMResult.from_lowres(
        lowres,
        tuple(x.shape[-2:]),
        target_classes=classes,
        logits=logits.detach(),
        activations=activations,
        gradients=gradients,
    )
