"""Where the objects of one image and class lie, checked against the decoded image.

`class_regions` turns an image's resolved annotations into, per class, a bool mask of the
object pixels (boxes, or segments where the annotation has them) and the boxes (for box
localization), in the original image's pixels. Boxes that are empty or inverted, that lie
wholly outside the image, or annotations made for another image size are issues, not regions;
boxes partly outside are clipped to the image (and counted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .annotations import AnnotationIssue, ObjectAnnotation
from .masks import box_mask, decode_rle, mask_box, polygon_mask

__all__ = ["Region", "class_regions"]


@dataclass
class Region:
    """The objects of one class in one image."""

    mask: np.ndarray  # bool [H, W]
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    clipped: int = 0  # boxes that reached outside the image and were clipped


def _why(exc: Exception) -> str:
    """What an object's failure says: the message of a check, the missing key of an RLE."""
    if isinstance(exc, KeyError):  # an RLE without "size" or "counts"
        return f"no {exc} in its segmentation"
    if isinstance(exc, (ValueError, TypeError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _segment(obj: ObjectAnnotation, height: int, width: int) -> np.ndarray:
    """The object's mask; the RLE's stated size is checked before decoding (a wrong or hostile
    size would otherwise allocate its h x w pixels first)."""
    if obj.rle is not None:
        h, w = (int(v) for v in obj.rle["size"])
        if (h, w) != (height, width):
            raise ValueError(f"its RLE is {w}x{h}, the image is {width}x{height}")
        return decode_rle(obj.rle)
    return polygon_mask(obj.polygons, height, width)


def _check_box(box: Sequence[float], width: int, height: int) -> tuple[tuple, bool]:
    x0, y0, x1, y1 = box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"empty or inverted box ({x0:g}, {y0:g}, {x1:g}, {y1:g}): needs x0 < x1 and y0 < y1"
        )
    c = (max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height)))
    if c[2] <= c[0] or c[3] <= c[1]:
        raise ValueError(
            f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {width}x{height} image"
        )
    return c, c != (x0, y0, x1, y1)


def class_regions(
    objects: Sequence[ObjectAnnotation], width: int, height: int
) -> tuple[dict[int, Region], list[AnnotationIssue]]:
    """Per class index, the region of its objects in a `width` x `height` image; and the
    objects that could not be placed, as issues naming where they came from."""
    regions: dict[int, Region] = {}
    issues: list[AnnotationIssue] = []
    for obj in objects:
        try:
            if obj.size is not None and tuple(obj.size) != (width, height):
                raise ValueError(
                    f"annotated for a {obj.size[0]}x{obj.size[1]} image, the file is "
                    f"{width}x{height} (another image, or rotated by its EXIF orientation?)"
                )
            clipped = False
            box = None
            if obj.box is not None:
                box, clipped = _check_box(obj.box, width, height)
            if obj.has_mask:
                mask = _segment(obj, height, width)
                if box is None:
                    box = mask_box(mask)
            else:
                mask = box_mask(box, height, width)
            if box is None or not mask.any():
                raise ValueError("the object covers no pixel of the image")
        except Exception as exc:  # a malformed value: this object fails, not the run
            issues.append(AnnotationIssue(obj.where, _why(exc), obj.file))
            continue
        region = regions.get(obj.cls)
        if region is None:
            region = regions[obj.cls] = Region(np.zeros((height, width), dtype=bool))
        region.mask |= mask
        region.boxes.append(box)
        region.where.append(obj.where)
        region.clipped += clipped
    return regions, issues
