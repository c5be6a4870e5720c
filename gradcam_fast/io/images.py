"""Reading image files into RGB, preprocessing them as torchvision does, and mapping maps back.

`load_image` turns a path or bytes into an RGB `PIL.Image` (EXIF orientation applied, first frame
of animations, alpha composited on white, 16-bit and float scaled to 8 bits) or raises
`ImageError` naming the file and the problem. `preprocess` is the weights' evaluation transform
as torchvision's weights define it (resize the shorter side to resize_size/crop_size of S with
their interpolation, center crop S, normalize; VGG's 256/224 bilinear by default, the model's own
through `preprocessing_of(meta)`); `model_view` is the same crop as uint8 pixels, what overlays
are drawn on; `cam_to_image` places a map computed on that crop back onto the original image's
pixels.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch
from PIL import Image, ImageOps

from ..format.preprocessing import IMAGENET_MEAN, IMAGENET_STD, normalize_pixels

if TYPE_CHECKING:
    from ..format.metadata import ModelMetadata
    from ..model.loading import ModelInfo

__all__ = [
    "IMAGE_EXTENSIONS",
    "INTERPOLATIONS",
    "ImageError",
    "ModelCrop",
    "Preprocessing",
    "cam_to_image",
    "load_image",
    "model_crop",
    "model_view",
    "preprocess",
    "preprocessing_of",
    "to_tensor",
    "view_of",
]

# Extensions a directory scan picks up; files named explicitly are tried whatever their name.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)

# What transparent pixels become: white, as a browser shows a transparent PNG on a white page.
# Dropping alpha instead would expose whatever colors the file stores under transparent pixels.
ALPHA_BACKGROUND = (255, 255, 255)

# Above this many pixels, model_view resamples the crop window only instead of resizing the whole
# image first (exact torchvision equality below it; memory stays bounded above it).
FULL_RESIZE_LIMIT = 1 << 24

# warnings.catch_warnings is process-global; header parsing (cheap) is serialized through this
# lock so concurrent decoders do not restore each other's filters. Pixel decoding runs unlocked.
_OPEN_LOCK = threading.Lock()


class ImageError(ValueError):
    """A file that cannot be used as an image: missing, unreadable, empty, truncated, not an
    image, or a decompression bomb. The message names the file and the problem."""


def _label(source: str | os.PathLike | bytes, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    return os.fspath(source)


def _open(source: str | os.PathLike | bytes, label: str) -> Image.Image:
    """Image.open with PIL's decompression-bomb warning turned into an ImageError."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ImageError(f"{label}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{label}: is a directory, not an image file") from None
        except OSError as exc:
            raise ImageError(f"{label}: cannot read the file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"{label}: empty file (0 bytes), not an image")
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{label}: refused as a possible decompression bomb ({exc}); images over {limit} "
            "pixels are not decoded. If the file is trusted, raise PIL.Image.MAX_IMAGE_PIXELS."
        ) from None
    except Image.UnidentifiedImageError:
        raise ImageError(
            f"{label}: not an image file PIL can read (unknown or corrupt format; supported: "
            "JPEG, PNG, WebP, BMP, TIFF, GIF)"
        ) from None
    except Exception as exc:  # plugins raise SyntaxError, struct.error, ... on corrupt headers
        raise ImageError(f"{label}: corrupt image header ({type(exc).__name__}: {exc})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with 8 bits per channel: alpha composited on white, high bit depths scaled down."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in image.info
    ):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    if mode.startswith(("I", "F")):  # 16-bit (I;16*), 32-bit int (I) or float (F) single channel
        values = np.asarray(image, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        if mode.startswith("I;16") or (mode == "I" and lo >= 0.0 and 255.0 < hi <= 65535.0):
            scaled = values / 257.0  # 16-bit range 0..65535 onto 0..255
        elif mode == "F" and lo >= 0.0 and hi <= 1.0:
            scaled = values * 255.0
        elif lo >= 0.0 and hi <= 255.0:
            scaled = values
        else:  # an arbitrary range: stretch it to 0..255
            scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else values * 0.0
        gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")
    return image.convert("RGB")  # L, P, 1, CMYK, YCbCr, LAB, HSV


def load_image(source: str | os.PathLike | bytes, name: str | None = None) -> Image.Image:
    """Decode a file path or raw bytes into an 8-bit RGB image, fully loaded.

    EXIF orientation is applied; animated files give their first frame; grayscale, palette, CMYK
    and 16-bit images are converted to RGB; transparent pixels are composited on white. `name`
    labels the image in error messages (default: the path). Raises `ImageError` for anything that
    is not a readable image, including images larger than `PIL.Image.MAX_IMAGE_PIXELS`.
    """
    label = _label(source, name)
    image = _open(source, label)
    try:
        image.seek(0)
        image.load()
    except Exception as exc:
        if "truncated" in str(exc):
            raise ImageError(f"{label}: truncated image file ({exc})") from None
        raise ImageError(f"{label}: cannot decode ({type(exc).__name__}: {exc})") from None
    if image.width < 1 or image.height < 1:
        raise ImageError(f"{label}: image has no pixels ({image.width}x{image.height})")
    with contextlib.suppress(Exception):  # a malformed EXIF block: keep the pixels as stored
        image = ImageOps.exif_transpose(image)
    try:
        return _to_rgb(image)
    except Exception as exc:
        raise ImageError(
            f"{label}: cannot convert {image.mode} pixels to RGB ({type(exc).__name__}: {exc})"
        ) from None


# The interpolations of torchvision's weights transforms, as PIL filters (torchvision's Resize on
# a PIL image calls Image.resize with these; PIL's resize always antialiases when downscaling).
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class Preprocessing(TypedDict):
    """The weights' resize and crop, as keyword arguments of `model_crop`, `model_view` and
    `preprocess`: `preprocess(image, S, **preprocessing_of(meta))`."""

    resize_size: int
    crop_size: int
    interpolation: str


# What models exported before the fields existed were preprocessed with: VGG's 256/224 bilinear.
_DEFAULT_PREPROCESSING = Preprocessing(resize_size=256, crop_size=224, interpolation="bilinear")


def preprocessing_of(meta: ModelMetadata | ModelInfo) -> Preprocessing:
    """The resize and crop a model's weights expect, from its `ModelMetadata` (or `ModelInfo`);
    fields an older object lacks take VGG's 256/224 bilinear. Refuses values `model_view`
    cannot apply (an unknown interpolation, a resize smaller than the crop) with a ValueError."""
    values = {k: getattr(meta, k, v) for k, v in _DEFAULT_PREPROCESSING.items()}
    try:
        _check_preprocessing(**values)
    except ValueError as exc:
        raise ValueError(f"the model's preprocessing metadata: {exc}") from None
    return Preprocessing(**values)  # type: ignore[typeddict-item]


def _check_preprocessing(resize_size: int, crop_size: int, interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {interpolation!r}"
        )
    if not (isinstance(resize_size, int) and isinstance(crop_size, int) and crop_size >= 1):
        raise ValueError(
            f"resize_size and crop_size must be positive integers, got {resize_size!r} and "
            f"{crop_size!r}"
        )
    if resize_size < crop_size:
        raise ValueError(
            f"resize_size ({resize_size}) must be at least crop_size ({crop_size}): the center "
            "crop is taken inside the resized image"
        )


def _resize_size(
    width: int, height: int, size: int, resize_size: int = 256, crop_size: int = 224
) -> tuple[int, int]:
    """torchvision's Resize(round(size * resize_size / crop_size)): the shorter side to that,
    aspect kept."""
    short_target = round(size * resize_size / crop_size)
    if width <= height:
        return short_target, int(short_target * height / width)
    return int(short_target * width / height), short_target


@dataclass(frozen=True)
class ModelCrop:
    """Where the model's S x S input comes from: resize the image to `resized` (w, h) with
    `interpolation`, then take the S x S window at (`left`, `top`) of the resized image."""

    size: int
    original: tuple[int, int]  # (width, height) of the decoded image
    resized: tuple[int, int]  # (width, height) after the resize
    left: int
    top: int
    interpolation: str = "bilinear"

    def box(self) -> tuple[float, float, float, float]:
        """The window in the original image's pixel coordinates: (x0, y0, x1, y1)."""
        sx = self.original[0] / self.resized[0]
        sy = self.original[1] / self.resized[1]
        return (
            self.left * sx,
            self.top * sy,
            (self.left + self.size) * sx,
            (self.top + self.size) * sy,
        )


def model_crop(
    width: int,
    height: int,
    size: int = 224,
    crop: bool = True,
    resize_size: int = 256,
    crop_size: int = 224,
    interpolation: str = "bilinear",
) -> ModelCrop:
    """The resize and crop `preprocess` applies to a `width` x `height` image: the shorter side
    to round(size * resize_size / crop_size), then the center size x size (the weights'
    Resize(resize_size) + CenterCrop(crop_size) scaled to `size`)."""
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    _check_preprocessing(resize_size, crop_size, interpolation)
    if not crop:
        return ModelCrop(size, (width, height), (size, size), 0, 0, interpolation)
    rw, rh = _resize_size(width, height, size, resize_size, crop_size)
    # torchvision's center_crop: int(round((dim - size) / 2)).
    left, top = round((rw - size) / 2), round((rh - size) / 2)
    return ModelCrop(size, (width, height), (rw, rh), left, top, interpolation)


def model_view(
    image: Image.Image,
    size: int = 224,
    crop: bool = True,
    *,
    resize_size: int = 256,
    crop_size: int = 224,
    interpolation: str = "bilinear",
) -> np.ndarray:
    """The uint8 RGB pixels [S, S, 3] the model sees: torchvision's Resize + CenterCrop (see
    `model_crop`), or with `crop=False` the whole image resized to S x S. PIL's resize with
    `interpolation` ("bilinear" or "bicubic", antialiased), as torchvision's Resize on PIL."""
    c = model_crop(image.width, image.height, size, crop, resize_size, crop_size, interpolation)
    return view_of(image, c)


def view_of(image: Image.Image, c: ModelCrop) -> np.ndarray:
    """The uint8 [S, S, 3] pixels of `image` (RGB, `c.original` in size) that the crop `c`
    describes: what `model_view` returns."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image (use load_image), got mode {image.mode}")
    if image.size != c.original:
        raise ValueError(f"the crop was computed for a {c.original} image, got {image.size}")
    resample = INTERPOLATIONS[c.interpolation]
    size = c.size
    if c.resized[0] * c.resized[1] > FULL_RESIZE_LIMIT:
        # A very elongated image (a 157-byte 1 x 20000 PNG asks for 256 x 5,120,000 pixels):
        # resample only the window, from the source region it covers. Same filter and support,
        # within one 8-bit level of resize-then-crop (the coefficients round differently).
        return np.array(image.resize((size, size), resample, box=c.box()))
    resized = image.resize(c.resized, resample)
    if c.resized != (size, size):
        resized = resized.crop((c.left, c.top, c.left + size, c.top + size))
    return np.array(resized, dtype=np.uint8)  # a writable copy


def to_tensor(
    pixels: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """uint8 [H, W, 3] pixels as a float32 [3, H, W] tensor, scaled to [0, 1] and normalized."""
    array = np.array(pixels, dtype=np.uint8, copy=not pixels.flags.writeable)
    return normalize_pixels(torch.from_numpy(array)[None], mean, std)[0].contiguous()


def preprocess(
    image: Image.Image,
    size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop: bool = True,
    *,
    resize_size: int = 256,
    crop_size: int = 224,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """The model input [3, S, S] float32 for an RGB image: the weights' evaluation transform
    (Resize(resize_size) + CenterCrop(crop_size) scaled to S with `interpolation`, ToTensor,
    Normalize(mean, std); the defaults are VGG's 256/224 bilinear), or with `crop=False` the
    whole image resized to S x S (aspect ratio not kept)."""
    view = model_view(
        image,
        size,
        crop,
        resize_size=resize_size,
        crop_size=crop_size,
        interpolation=interpolation,
    )
    return to_tensor(view, mean, std)


def cam_to_image(cam: np.ndarray | torch.Tensor, crop: ModelCrop) -> np.ndarray:
    """A map computed on the model's S x S view, placed on the original image's pixels.

    Returns float32 [H, W] of the original image: the map resized (bilinear) onto the region the
    model saw, NaN outside it (the parts the center crop cut off, which the model never saw).
    """
    cam = torch.as_tensor(cam, dtype=torch.float32, device="cpu")
    if cam.shape != (crop.size, crop.size):
        raise ValueError(f"expected a [{crop.size}, {crop.size}] map, got {list(cam.shape)}")
    width, height = crop.original
    box = crop.box()
    x0, y0, x1, y1 = (round(v) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    # A window thinner than one original pixel (a very elongated image) still covers the pixel
    # it lies in, rather than rounding away to nothing.
    if x1 <= x0:
        x0 = min(max(int((box[0] + box[2]) / 2), 0), width - 1)
        x1 = x0 + 1
    if y1 <= y0:
        y0 = min(max(int((box[1] + box[3]) / 2), 0), height - 1)
        y1 = y0 + 1
    out = np.full((height, width), np.nan, dtype=np.float32)
    if x1 > x0 and y1 > y0:
        placed = torch.nn.functional.interpolate(
            cam[None, None], size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False
        )
        out[y0:y1, x0:x1] = placed[0, 0].clamp_(0.0, 1.0).numpy()
    return out
