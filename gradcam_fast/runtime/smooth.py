"""aug_smooth: CAMs averaged over test-time augmentations, in one batched session run.

pytorch-grad-cam's `aug_smooth=True` runs its CAM once per ttach transform of
`Compose([HorizontalFlip(), Multiply(factors=[0.9, 1, 1.1])])` (`base_cam.py`), maps each CAM
back (flipping the flipped ones) and averages the min-max normalized, upsampled maps. Its
"scales" are intensity factors on the normalized input tensor, not resizes, so all six copies keep
the exported image size S and go through the model as one batch of 6 B images (split by the
session's `max_batch_size` if set) instead of six runs.

Two choices differ from pytorch-grad-cam, both documented on `aug_smooth_cams`: ranks (-1 = the
predicted class) are resolved on the original image and that class is explained in every copy,
and models exported with `raw_pixels` are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..cams.methods import check_method
from ..check.finite import NonFiniteMapsError, check_finite
from ..format.inputs import as_image_batch, as_targets
from ..format.protocols import Session
from ..format.result import GradCAMResult

__all__ = ["AUGMENTATIONS", "aug_smooth_cams", "augment"]

# (horizontal flip, intensity factor) in ttach's order; (False, 1.0) is the original image.
AUGMENTATIONS: tuple[tuple[bool, float], ...] = tuple(
    (flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1)
)
_ORIGINAL = AUGMENTATIONS.index((False, 1.0))


def augment(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, S, S] normalized images -> [len(AUGMENTATIONS) * B, 3, S, S], copy-major."""
    return torch.cat([(images.flip(-1) if flip else images) * f for flip, f in AUGMENTATIONS])


def _deaugment_mean(maps: torch.Tensor, batch: int) -> torch.Tensor:
    """[N * B, K, h, w] maps of the augmented copies -> [B, K, h, w], flipped back and averaged."""
    maps = maps.reshape(len(AUGMENTATIONS), batch, *maps.shape[1:])
    flipped = torch.tensor([flip for flip, _ in AUGMENTATIONS], device=maps.device)
    maps = torch.where(flipped.reshape(-1, 1, 1, 1, 1), maps.flip(-1), maps)
    return maps.mean(dim=0)


def aug_smooth_cams(
    session: Session,
    images: torch.Tensor | np.ndarray,
    targets: int | Sequence[int] | np.ndarray | torch.Tensor | None = None,
    method: str = "gradcam",
) -> GradCAMResult:
    """`method`'s maps for `images` averaged over `AUGMENTATIONS` (what
    `GradCAMSession(...)(images, targets, method=..., aug_smooth=True)` returns).

    - `cams` [B, K, S, S]: the mean of the six de-augmented, upsampled, min-max normalized maps,
      as pytorch-grad-cam computes it (in [0, 1], not normalized again after averaging).
    - `cams_lowres`: the mean of the de-augmented low-resolution maps (a flip of the feature grid
      mirrors the image exactly when S is a multiple of the layer's total stride).
    - `target_classes`, `logits`, `activations`, `gradients`: those of the original image.

    Targets given as ranks (-1 = predicted class) are resolved on the original image, and that
    class is explained in every copy; pytorch-grad-cam re-predicts per copy, which can average
    maps of different classes. Copies whose ranks resolve to another class are run again with
    the original's class indices (a second, smaller run; none when predictions are stable).

    Models exported with `raw_pixels` are refused: the intensity factors apply to the normalized
    tensor, which such a model never receives.
    """
    meta = session.metadata
    if meta.input_format != "float_nchw":
        raise ValueError(
            "aug_smooth multiplies the normalized input by 0.9 and 1.1 (pytorch-grad-cam's "
            f"transforms), which a model with input_format {meta.input_format!r} cannot take: "
            "use a model exported without raw_pixels"
        )
    check_method(method)
    x = as_image_batch(images, meta.image_size, session.device)
    batch, copies = x.shape[0], len(AUGMENTATIONS)
    t = as_targets(targets, batch, meta.num_targets, meta.num_classes)
    augmented = augment(x)
    run = _unchecked(session, augmented, t.repeat(copies, 1), method)

    original = slice(_ORIGINAL * batch, (_ORIGINAL + 1) * batch)
    classes = run.target_classes[original]
    wanted = classes.repeat(copies, 1)
    cams, lowres = run.cams, run.cams_lowres
    redo = (run.target_classes != wanted).any(dim=1).nonzero().squeeze(1)
    if redo.numel():
        fixed = _unchecked(session, augmented[redo], wanted[redo], method)
        cams = cams.index_copy(0, redo, fixed.cams)
        lowres = lowres.index_copy(0, redo, fixed.cams_lowres)
    return check_finite(  # names the original images whose copies were not all finite
        GradCAMResult(
            cams=_deaugment_mean(cams, batch),
            cams_lowres=_deaugment_mean(lowres, batch),
            target_classes=classes,
            logits=run.logits[original],
            activations=run.activations[original],
            gradients=None if run.gradients is None else run.gradients[original],
            channel_weights=None if run.channel_weights is None else run.channel_weights[original],
        )
    )


def _unchecked(session, images: torch.Tensor, targets: torch.Tensor, method: str):
    """The session's result for the augmented copies, non-finite ones included (their maps are
    NaN, so the mean over an image's copies is too, and the final check names the image)."""
    try:
        return session(images, targets, method=method)
    except NonFiniteMapsError as exc:
        return exc.result
