"""The benchmarks' images: JPEG files made from the example photos at sizes a service sees, and
the fidelity photos preprocessed as `explain` does."""

from __future__ import annotations

import io
import random
from pathlib import Path

__all__ = ["EXAMPLES", "fidelity_photos", "jpegs"]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "images"
PHOTOS = [EXAMPLES, ROOT / "examples" / "fidelity_photos"]


def jpegs(count: int, seed: int = 0) -> list[bytes]:
    """`count` JPEG files (quality 90) made from the example images, 300 to 640 px wide."""
    from PIL import Image

    sources = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))]
    rng = random.Random(seed)
    files = []
    for i in range(count):
        image = sources[i % len(sources)]
        width = rng.randint(300, 640)
        buffer = io.BytesIO()
        image.resize((width, max(32, width * image.height // image.width))).save(
            buffer, format="JPEG", quality=90
        )
        files.append(buffer.getvalue())
    return files


def fidelity_photos(size: int = 224):
    """The 16 fidelity photos' names and the images [16, 3, size, size], preprocessed like
    `explain` does."""
    import torch

    from gradcam_fast.io.images import load_image, preprocess

    files = sorted(p for folder in PHOTOS for p in folder.glob("*.jpg"))
    return [p.name for p in files], torch.stack([preprocess(load_image(p), size) for p in files])
