"""Localization metrics: does a map [H, W] fall on the object (a bool mask [H, W] of the same
image, the union of the class's boxes or segments)?

- Pointing game (Zhang et al., "Top-down neural attention by excitation backprop", 2016): a hit
  when the map's maximum (the first in row-major order) lies within `tolerance` pixels (15 in
  the paper) of the object: 1 or 0.
- Energy-based pointing game (Wang et al., "Score-CAM", 2020): the share of the map's mass
  inside the object, sum(m * mask) / sum(m), in [0, 1].
- Box localization (Selvaraju et al., "Grad-CAM", 2017, after the ILSVRC protocol): threshold
  the map at `threshold` x its maximum (0.15 in the paper), take the bounding box of the largest
  8-connected segment, and count a hit when its IoU with one of the object's boxes is >= 0.5.

A map with no mass (all zero, or NaN where the model saw nothing) scores None: undefined, not 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .masks import mask_box

__all__ = [
    "IOU_HIT",
    "POINTING_TOLERANCE",
    "box_iou",
    "box_localization",
    "energy",
    "largest_segment_box",
    "pointing_game",
]

POINTING_TOLERANCE = 15  # pixels of the original image, as in the paper
IOU_HIT = 0.5
BOX_THRESHOLD = 0.15


def _clean(cam: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(cam, dtype=np.float64), nan=0.0)


def pointing_game(
    cam: np.ndarray, mask: np.ndarray, tolerance: float = POINTING_TOLERANCE
) -> float | None:
    """1.0 when the map's maximum lies within `tolerance` pixels (Euclidean, to the nearest
    object pixel's center) of the object, else 0.0; None for a map with no mass or no object."""
    m = _clean(cam)
    if m.max() <= 0 or not mask.any():
        return None
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    r = int(np.floor(tolerance))
    y0, y1, x0, x1 = (
        max(y - r, 0),
        min(y + r + 1, m.shape[0]),
        max(x - r, 0),
        min(x + r + 1, m.shape[1]),
    )
    yy, xx = np.mgrid[y0:y1, x0:x1]
    near = (yy - y) ** 2 + (xx - x) ** 2 <= tolerance**2
    return float(bool((mask[y0:y1, x0:x1] & near).any()))


def energy(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """sum(m * mask) / sum(m): the share of the map's mass on the object (None without mass)."""
    m = _clean(cam)
    total = m.sum()
    if total <= 0 or not mask.any():
        return None
    return float(m[mask].sum() / total)


def largest_segment_box(region: np.ndarray) -> tuple[float, float, float, float] | None:
    """Bounding box of the largest 8-connected segment of a bool [H, W] mask (None if empty).
    Components by label propagation (each pixel takes its neighbors' largest label until nothing
    changes), in torch, so no scipy is needed."""
    if not region.any():
        return None
    fg = torch.from_numpy(np.ascontiguousarray(region))[None, None]
    labels = torch.arange(1, region.size + 1, dtype=torch.float64).reshape(fg.shape) * fg
    while True:
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * fg
        if torch.equal(grown, labels):
            break
        labels = grown
    values, counts = torch.unique(labels[fg], return_counts=True)
    biggest = values[counts.argmax()]
    return mask_box((labels[0, 0] == biggest).numpy())


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def box_localization(
    cam: np.ndarray, boxes: Sequence[Sequence[float]], threshold: float = BOX_THRESHOLD
) -> tuple[float | None, tuple[float, float, float, float] | None]:
    """(best IoU of the map's box with `boxes`, the map's box): the map thresholded at
    `threshold` x its maximum, its largest segment's bounding box. (None, None) without mass."""
    m = _clean(cam)
    peak = m.max()
    if peak <= 0 or not boxes:
        return None, None
    found = largest_segment_box(m >= threshold * peak)
    return max(box_iou(found, b) for b in boxes), found
