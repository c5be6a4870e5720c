"""GradCAMResult, what a session call and the eager reference return (what code that runs a
session relies on, `Session`, is in protocols.py)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["GradCAMResult"]


@dataclass
class GradCAMResult:
    """Grad-CAM maps for B images and K target classes each, on the device that computed them."""

    cams: torch.Tensor  # [B, K, S, S] float32 in [0, 1], upsampled and min-max normalized
    cams_lowres: torch.Tensor  # [B, K, h, w] float32: ReLU(sum_c w_c A_c) at the layer's size
    target_classes: torch.Tensor  # [B, K] int64, the classes explained
    logits: torch.Tensor  # [B, num_classes] float32
    activations: torch.Tensor  # [B, C, h, w] float32, the target layer's output
    gradients: torch.Tensor | None  # [B, K, C, h, w] float32, d logit_target / d activations
    # [B, K, C], Grad-CAM's weights; set by the channel-weights model (channel_weights_only=True,
    # which returns no gradients), else None (they are gradients.mean((-2, -1)))
    channel_weights: torch.Tensor | None = None

    @classmethod
    def from_lowres(
        cls, cams_lowres: torch.Tensor, size: int | tuple[int, int], **outputs
    ) -> GradCAMResult:
        """The result whose `cams` are `cams_lowres` upsampled to `size` and min-max normalized
        (`postprocess.upsample_normalize`); `outputs` are the other fields."""
        from ..cams.postprocess import upsample_normalize

        return cls(cams=upsample_normalize(cams_lowres, size), cams_lowres=cams_lowres, **outputs)

    def to(self, device: str | torch.device) -> GradCAMResult:
        """A copy with every tensor on `device` (e.g. "cpu" before converting to NumPy)."""
        return GradCAMResult(**{k: v if v is None else v.to(device) for k, v in vars(self).items()})

    def weights(self) -> torch.Tensor:
        """Grad-CAM's channel weights [B, K, C]: the spatial means of the gradients."""
        if self.channel_weights is not None:
            return self.channel_weights
        return self.gradients.mean(dim=(-2, -1))

    def probabilities(self) -> torch.Tensor:
        """Softmax of the logits, [B, num_classes]."""
        return torch.softmax(self.logits.float(), dim=1)
