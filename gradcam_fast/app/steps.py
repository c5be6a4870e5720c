"""The steps one image goes through when explained from a file or bytes, shared by `explain`
(files -> overlays and results.jsonl) and Ray (`distributed`, bytes -> Parquet rows).

`decode` reads an image into what the model takes (failures become an error message, never an
exception: one bad file must not stop a run), `model_input` stacks a batch of them, and
`write_overlays` draws and writes one overlay PNG per map, named `<stem>_<class>_<name>.png`.
"""

from __future__ import annotations

import os
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..format.metadata import ModelMetadata
from ..io.colormaps import overlay
from ..io.files import save_npy, save_png
from ..io.images import (
    ImageError,
    ModelCrop,
    cam_to_image,
    load_image,
    model_crop,
    preprocessing_of,
    to_tensor,
    view_of,
)

__all__ = [
    "Decoded",
    "decode",
    "model_input",
    "overlay_name",
    "preprocessing_of",
    "slug",
    "write_overlays",
]


@dataclass
class Decoded:
    """One decoded input, or the error that made it unusable."""

    view: np.ndarray | None = None  # uint8 [S, S, 3], what the model sees
    tensor: torch.Tensor | None = None  # float32 [3, S, S], normalized (None for raw pixels)
    crop: ModelCrop | None = None  # where the view lies in the original
    original: np.ndarray | None = None  # uint8 [H, W, 3], kept for full-image overlays
    error: str | None = None


def decode(
    source: str | os.PathLike | bytes,
    meta: ModelMetadata,
    *,
    name: str | None = None,
    crop: bool = True,
    keep_original: bool = False,
    verbose: bool = False,
) -> Decoded:
    """Read `source` (a path, or bytes labeled `name`) into the model's input for `meta`: the
    view (resized and cropped as the metadata's resize_size, crop_size and interpolation say),
    and the normalized tensor unless the model takes raw pixels. An unreadable image gives
    `Decoded(error=...)` naming the file; so does an unexpected failure (its traceback printed
    when `verbose`)."""
    label = name if name is not None else os.fspath(source)
    try:
        image = load_image(source, name=name)
        # one crop for the view and for mapping maps back onto the original (cam_to_image)
        where = model_crop(
            image.width, image.height, meta.image_size, crop, **preprocessing_of(meta)
        )
        view = view_of(image, where)
        raw = meta.input_format == "uint8_nhwc"
        return Decoded(
            view=view,
            tensor=None if raw else to_tensor(view, meta.mean, meta.std),
            crop=where,
            original=np.asarray(image) if keep_original else None,
        )
    except ImageError as exc:
        return Decoded(error=str(exc))
    except Exception as exc:  # a bug or resource problem with this file: report it, go on
        if verbose:
            traceback.print_exc()
        return Decoded(error=f"{label}: unexpected {type(exc).__name__} while reading: {exc}")


def model_input(decoded: Sequence[Decoded]) -> torch.Tensor:
    """The batch for a session: uint8 [B, S, S, 3] views for raw-pixel models (no tensors were
    made), else the normalized float32 [B, 3, S, S] tensors."""
    if decoded[0].tensor is None:
        return torch.from_numpy(np.stack([d.view for d in decoded]))
    return torch.stack([d.tensor for d in decoded])


def slug(text: str) -> str:
    """`text` as a safe file-name part: runs of other characters become '-'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "image"


def overlay_name(stem: str, index: int, names: Sequence[str]) -> str:
    """`<stem>_<class index>_<class name>` (without the name when the model has none)."""
    return f"{stem}_{index}" + (f"_{slug(names[index])}" if names else "")


def write_overlays(
    folder: Path,
    stem: str,
    decoded: Decoded,
    cams: np.ndarray,
    classes: Sequence[int],
    names: Sequence[str],
    *,
    colormap: str = "jet",
    alpha: float = 0.5,
    full_image: bool = False,
    save_maps: bool = False,
) -> list[Path]:
    """One overlay PNG per map of `cams` [K, S, S] (class `classes[k]`), drawn on what the model
    saw or, with `full_image`, on the original image; with `save_maps` also each map as .npy.
    Every file is written atomically. Returns the paths written, in order."""
    written: list[Path] = []
    for cam, index in zip(cams, classes, strict=True):
        name = overlay_name(stem, index, names)
        if full_image:
            picture = overlay(decoded.original, cam_to_image(cam, decoded.crop), colormap, alpha)
        else:
            picture = overlay(decoded.view, cam, colormap, alpha)
        written.append(save_png(picture, folder / f"{name}.png"))
        if save_maps:
            written.append(save_npy(cam.astype(np.float32), folder / f"{name}.npy"))
    return written
