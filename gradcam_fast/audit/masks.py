"""Object regions as boolean masks in original image pixels: boxes, COCO polygons and RLE.

Coordinates are continuous pixel edges: pixel (row i, column j) covers [j, j+1) x [i, i+1) and
belongs to a box (x0, y0, x1, y1) when its center (j + 0.5, i + 0.5) lies in [x0, x1) x [y0, y1). COCO's
run-length encoding is decoded here (the compressed string form as pycocotools' `rleFrString`
reads it), so pycocotools is not needed; the tests check both against it where it installs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["box_mask", "decode_rle", "mask_box", "polygon_mask"]


def box_mask(box: Sequence[float], height: int, width: int) -> np.ndarray:
    """Bool [H, W]: the pixels whose centers lie in `box` (x0, y0, x1, y1), clipped to the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    mask = np.zeros((height, width), dtype=bool)
    c0, c1 = max(int(np.ceil(x0 - 0.5)), 0), min(int(np.ceil(x1 - 0.5)) - 1, width - 1)
    r0, r1 = max(int(np.ceil(y0 - 0.5)), 0), min(int(np.ceil(y1 - 0.5)) - 1, height - 1)
    if c1 >= c0 and r1 >= r0:
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The smallest box (x0, y0, x1, y1) holding every True pixel of `mask`; None when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def polygon_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Bool [H, W]: the union of COCO polygons ([x1, y1, x2, y2, ...] each), filled with PIL."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        points = [(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly) - 1, 2)]
        if len(points) >= 3:
            draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def _counts_from_string(text: str) -> list[int]:
    """pycocotools' compressed counts: 5 bits per character (offset 48), a continuation bit,
    sign extension, and each count after the second stored as a difference from the one two
    before it. Raises ValueError for a character outside that alphabet or a string that ends
    inside a count (a run that never ends)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p == len(text):
                raise ValueError("compressed RLE counts end inside a count (truncated string)")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE counts hold {text[p]!r}, not one of '0'..'o'")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def decode_rle(rle: dict) -> np.ndarray:
    """Bool [H, W] from COCO RLE {"size": [h, w], "counts": list or compressed string}: runs
    alternate background/foreground, starting with background, in column-major order."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = _counts_from_string(counts)
    counts = [int(c) for c in counts]
    if any(c < 0 for c in counts) or sum(counts) != height * width:
        raise ValueError(f"RLE counts sum to {sum(counts)}, not {height}x{width} pixels")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T.copy()
