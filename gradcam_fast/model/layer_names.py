"""Naming a model's layers: every traced layer by node name, and the default Grad-CAM target."""

from __future__ import annotations

from torch import nn

__all__ = ["default_target_layer", "layer_names"]


def layer_names(model: nn.Module, image_size: int = 224) -> list[str]:
    """Every traced layer of `model` by node name (`features.0`, `layer4.1.relu_1`, ...)."""
    from .trace import layer_table, trace_model

    return [layer.name for layer in layer_table(trace_model(model, image_size))]


def default_target_layer(model: nn.Module, image_size: int = 224) -> str:
    """The default Grad-CAM target: the last stage's output (`features.35` in VGG19, the output
    of `layer4` in ResNets; see `trace.default_target_node` and docs/models.md)."""
    from .trace import default_target_node, trace_model

    traced = trace_model(model, image_size)
    return traced.name_of(default_target_node(traced))
