"""GradCAMGraph: one forward call that also returns the target layer's gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .metadata import ModelMetadata
from .models import default_target_layer, feature_layer_names, model_info
from .vjp import FLATTEN, forward_saving, vjp

__all__ = ["GradCAMGraph", "resolve_target_layer", "resolve_targets"]


def resolve_target_layer(model: nn.Module, target_layer: str | None) -> tuple[str, int]:
    """Check `target_layer` against `model.features` and return (name, index in features)."""
    if not isinstance(getattr(model, "features", None), nn.Sequential):
        raise TypeError(
            f"{type(model).__name__} has no `features` nn.Sequential; gradcam_fast supports "
            "torchvision VGG models (and modules laid out like them)"
        )
    name = default_target_layer(model) if target_layer is None else target_layer
    valid = feature_layer_names(model)
    if name not in valid:
        raise ValueError(
            f"target layer {name!r} is not a layer of model.features; valid names are "
            f"{', '.join(valid)} (default {default_target_layer(model)})"
        )
    return name, valid.index(name)


def resolve_targets(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Class indices [B, K] from targets [B, K]: t >= 0 is a class, -r the r-th highest logit."""
    ranked = torch.topk(logits, logits.shape[1], dim=1).indices  # sorted, descending
    rank = (-targets - 1).clamp(min=0)
    return torch.where(targets >= 0, targets, ranked.gather(1, rank))


# Layers between the target and the first Linear through which the spatial sum of a channel's
# gradient is unchanged: a max-pool routes each gradient to one winner, an average pool splits
# it with weights that sum to 1.
_SUM_PRESERVING = (nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, type(FLATTEN))


class GradCAMGraph(nn.Module):
    """VGG rewritten to return (logits, target_classes, activations, gradients) in one call.

    The network is split at `target_layer`; the part above it runs forward while keeping what
    its backward needs, and that backward is written out layer by layer (see `vjp.py`), for K
    target classes at once. No autograd and no hooks, so `torch.onnx.export` can trace it.
    Shares parameters with `model` and puts it in eval mode (this is an inference graph).

    `gradients=False` makes the channel-weights graph: it returns Grad-CAM's channel weights
    [B,K,C] (the spatial means of the gradients) instead of the gradients. When only pooling lies between the target and the
    first Linear (the default target), they come from that Linear's weights summed over each
    channel's positions (C columns instead of C*7*7), so the costly first VJP is skipped.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: str | None = None,
        num_targets: int = 1,
        gradients: bool = True,
    ):
        super().__init__()
        if num_targets < 1:
            raise ValueError(f"num_targets must be at least 1, got {num_targets}")
        self.target_layer, index = resolve_target_layer(model, target_layer)
        self.num_targets = num_targets
        self.gradients = gradients
        self.info = model_info(model)  # where the network came from, for the metadata
        self.body = model.features[: index + 1]
        self.head = nn.ModuleList(
            [*model.features[index + 1 :], model.avgpool, FLATTEN, *model.classifier]
        )
        last = self.head[-1]
        self.num_classes = last.out_features if isinstance(last, nn.Linear) else None
        self.first_linear, channel_sums = None, None
        if not gradients:
            self.first_linear, channel_sums = self._channel_sums(model)
        self.register_buffer("channel_sums", channel_sums, persistent=False)
        self.eval()

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
            gradients=self.gradients,
            **fields,
        )

    def _channel_sums(self, model: nn.Module) -> tuple[int | None, torch.Tensor | None]:
        """(index of the first Linear in the head, its weight summed per channel [out, C]), or
        (None, None) when something other than pooling precedes it."""
        first = next(i for i, m in enumerate(self.head) if isinstance(m, nn.Linear))
        if not all(isinstance(m, _SUM_PRESERVING) for m in self.head[:first]):
            return None, None
        weight = self.head[first].weight.detach()
        channels = next(m.out_channels for m in reversed(self.body) if isinstance(m, nn.Conv2d))
        return first, weight.reshape(weight.shape[0], channels, -1).sum(dim=-1)

    def forward(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B,3,S,S] float, targets [B,K] int64 -> logits [B,N], target_classes [B,K],
        activations [B,C,h,w], gradients [B,K,C,h,w] (d logit_target / d activations), or
        with gradients=False the channel weights [B,K,C]."""
        # The body may run in float16 (see torch_backend); the head, forward and backward, always
        # runs in float32: it is under 1% of the work, and float16 gradients would underflow.
        activations = self.body(images.to(self.body[0].weight.dtype)).float()
        x, saved = activations, []
        for layer in self.head:
            x, s = forward_saving(layer, x)
            saved.append(s)
        logits = x
        classes = resolve_targets(logits, targets)

        layers = list(zip(self.head, saved, strict=True))
        last, _ = layers[-1]
        if isinstance(last, nn.Linear):  # d logit_c / d input = row c of W: a gather
            g = F.embedding(classes, last.weight)
            layers = layers[:-1]
        else:
            g = F.one_hot(classes, logits.shape[1]).to(logits.dtype)
        if self.first_linear is not None:  # channel weights through the per-channel sums
            for layer, s in reversed(layers[self.first_linear + 1 :]):
                g = vjp(layer, g, s)
            h, w = activations.shape[-2:]
            return logits, classes, activations, (g @ self.channel_sums) / (h * w)
        for layer, s in reversed(layers):
            g = vjp(layer, g, s)
        if not self.gradients:
            return logits, classes, activations, g.mean(dim=(-2, -1))
        return logits, classes, activations, g
