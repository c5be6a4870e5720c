"""The two seams around a session, as protocols.

- `Session`: what code that runs Grad-CAM relies on (explain, aug_smooth, audit, the Ray
  predictor): images, targets -> `GradCAMResult`. `GradCAMSession` is one.
- `Runner`: the backend seam inside a session: images, targets -> the model's raw outputs
  (logits, target_classes, activations, gradients or channel weights). `OrtRunner`,
  `OpenVinoRunner` and `TorchRunner` (runtime/) are the three; which backend a session runs is
  its `backend` ("onnxruntime", "openvino", "torch").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from .metadata import ModelMetadata
    from .result import GradCAMResult

__all__ = ["Runner", "Session"]


class Session(Protocol):
    """What `explain`, `smooth.aug_smooth_cams` and the Ray predictor use of a session:
    `GradCAMSession` is one (for an ONNX file or, with `path` None, a torch model)."""

    path: Path | None
    device: torch.device
    metadata: ModelMetadata

    # images, targets=None, *, method="gradcam", aug_smooth=False: see GradCAMSession.__call__
    __call__: Callable[..., GradCAMResult]


class Runner(Protocol):
    """The backend seam: images, targets -> (logits, target_classes, activations, gradients or
    channel weights), with the metadata of the model it runs."""

    device: torch.device
    metadata: ModelMetadata
    providers: list[str]

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]: ...
