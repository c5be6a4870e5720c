"""Decoding, preprocessing, mapping maps back, colormaps, overlays and atomic writes (no model)."""

from __future__ import annotations

import dataclasses
import io
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from gradcam_fast.format.metadata import ModelMetadata
from gradcam_fast.format.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from gradcam_fast.io.colormaps import COLORMAPS, apply_colormap, colormap_lut, overlay
from gradcam_fast.io.files import atomic_file, save_npy, save_png
from gradcam_fast.io.images import (
    ImageError,
    cam_to_image,
    load_image,
    model_crop,
    model_view,
    preprocess,
    preprocessing_of,
    view_of,
)
from gradcam_fast.model.loading import ModelInfo

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# --------------------------------------------------------------------------- preprocessing


@pytest.mark.parametrize("name", ["cat.jpg", "astronaut.jpg", "rocket.jpg"])
@pytest.mark.parametrize("size", [224, 64, 97])
def test_preprocess_equals_torchvision(name, size):
    image = load_image(SAMPLES / name)
    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    crop = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), *normalize])
    whole = T.Compose([T.Resize((size, size)), *normalize])
    x = preprocess(image, size)
    assert x.shape == (3, size, size) and x.dtype == torch.float32
    torch.testing.assert_close(x, crop(image), rtol=0, atol=1e-6)
    torch.testing.assert_close(preprocess(image, size, crop=False), whole(image), rtol=0, atol=1e-6)


def test_model_view_is_the_unnormalized_input():
    image = load_image(SAMPLES / "coffee.jpg")
    view = model_view(image, 64)
    assert view.shape == (64, 64, 3) and view.dtype == np.uint8
    expected = T.Compose([T.Resize(73), T.CenterCrop(64), T.PILToTensor()])(image)
    np.testing.assert_array_equal(view, expected.permute(1, 2, 0).numpy())
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    x = preprocess(image, 64, mean, std)
    torch.testing.assert_close(x, (torch.from_numpy(view).permute(2, 0, 1) / 255 - 0.5) / 0.25)


def test_cam_to_image_puts_the_map_where_the_model_looked():
    # An image whose red channel is its x coordinate: the model's view of it, read back as a map
    # and placed on the original, must give the x coordinate again inside the crop box.
    width, height, size = 300, 180, 48
    ramp = np.tile(np.linspace(0, 255, width), (height, 1))
    pixels = np.stack([ramp, np.zeros_like(ramp), np.zeros_like(ramp)], 2).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    for crop in (True, False):
        view = model_view(image, size, crop)
        placed = cam_to_image(view[..., 0] / 255.0, model_crop(width, height, size, crop))
        assert placed.shape == (height, width) and placed.dtype == np.float32
        seen = ~np.isnan(placed)
        if crop:  # resize 256 + crop 224: the sides lose more than the top and bottom
            rows, cols = seen.any(axis=1), seen.any(axis=0)
            assert not rows[0] and not rows[-1] and 0.8 * height < rows.sum() < 0.9 * height
            assert not cols[0] and not cols[-1] and 0.45 * width < cols.sum() < 0.55 * width
            assert (seen == rows[:, None] & cols[None, :]).all()  # one rectangle
        else:
            assert seen.all()
        middle = height // 2
        first, last = np.flatnonzero(seen[middle])[[0, -1]]
        inner = slice(first + 4, last - 4)  # away from the box edges the ramp comes back exactly
        assert np.abs(placed[middle, inner] - ramp[middle, inner] / 255.0).max() < 0.01


def test_cam_to_image_refuses_a_map_of_another_size():
    with pytest.raises(ValueError, match=r"\[32, 32\] map"):
        cam_to_image(np.zeros((16, 16)), model_crop(100, 100, 32))


# ------------------------------------------------------------- the weights' own preprocessing

VGG_META = ModelMetadata(
    arch="vgg19", target_layer="features.35", image_size=224, num_targets=1, num_classes=1000,
    mean=IMAGENET_MEAN, std=IMAGENET_STD, weights="imagenet:VGG19_Weights.IMAGENET1K_V1",
)  # fmt: skip
RESNET50 = {"resize_size": 232, "crop_size": 224, "interpolation": "bilinear"}
INCEPTION_V3 = {"resize_size": 342, "crop_size": 299, "interpolation": "bilinear"}
EFFICIENTNET_B0 = {"resize_size": 256, "crop_size": 224, "interpolation": "bicubic"}


@pytest.mark.parametrize(
    ("size", "weights", "short"),
    [
        (224, {}, 256),  # VGG, the defaults: 256/224
        (240, {}, 274),  # round(240 * 256 / 224) = round(274.29)
        (224, RESNET50, 232),
        (240, RESNET50, 249),  # round(240 * 232 / 224) = round(248.57)
        (32, RESNET50, 33),  # round(33.14); VGG's would be 37
        (299, INCEPTION_V3, 342),
        (224, INCEPTION_V3, 256),  # round(224 * 342 / 299) = round(256.21)
        (224, EFFICIENTNET_B0, 256),
    ],
)
def test_the_shorter_side_follows_the_weights_resize(size, weights, short):
    for width, height in ((640, 480), (480, 640)):
        c = model_crop(width, height, size, **weights)
        assert min(c.resized) == short
        assert max(c.resized) == int(short * 640 / 480)  # torchvision's long side: truncated
        assert (c.left, c.top) == (
            round((c.resized[0] - size) / 2),
            round((c.resized[1] - size) / 2),
        )
        assert c.interpolation == weights.get("interpolation", "bilinear")


@pytest.mark.parametrize("name", ["cat.jpg", "rocket.jpg"])
@pytest.mark.parametrize("size", [224, 240, 61])
@pytest.mark.parametrize("weights", [RESNET50, INCEPTION_V3, EFFICIENTNET_B0])
def test_weights_preprocessing_equals_torchvision(name, size, weights):
    """torchvision's Resize(round(S * resize / crop), interpolation) + CenterCrop(S) on the PIL
    image, the weights' transform scaled to S; bicubic included."""
    image = load_image(SAMPLES / name)
    mode = T.InterpolationMode(weights["interpolation"])
    short = round(size * weights["resize_size"] / weights["crop_size"])
    view = T.Compose([T.Resize(short, interpolation=mode), T.CenterCrop(size), T.PILToTensor()])
    expected = view(image).permute(1, 2, 0).numpy().astype(int)
    got = model_view(image, size, **weights)
    assert got.shape == (size, size, 3)
    assert np.abs(got.astype(int) - expected).max() <= 1  # the same PIL filter: equal in practice
    assert (got != expected).mean() < 0.01
    normalize = T.Compose([T.Resize(short, interpolation=mode), T.CenterCrop(size), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])  # fmt: skip
    x = preprocess(image, size, IMAGENET_MEAN, IMAGENET_STD, **weights)
    torch.testing.assert_close(x, normalize(image), rtol=0, atol=2 / 255 / min(IMAGENET_STD))


def test_bicubic_is_not_bilinear():
    image = load_image(SAMPLES / "astronaut.jpg")
    bilinear = model_view(image, 64).astype(int)
    bicubic = model_view(image, 64, interpolation="bicubic").astype(int)
    assert (bilinear != bicubic).mean() > 0.3  # another filter, not the same pixels
    whole = model_view(image, 64, crop=False, interpolation="bicubic")
    np.testing.assert_array_equal(whole, np.asarray(image.resize((64, 64), Image.BICUBIC)))


def test_preprocessing_of_reads_the_metadata_and_defaults_to_vgg():
    assert preprocessing_of(VGG_META) == {
        "resize_size": 256, "crop_size": 224, "interpolation": "bilinear"
    }  # fmt: skip
    resnet = dataclasses.replace(VGG_META, arch="resnet50", resize_size=232)
    assert preprocessing_of(resnet)["resize_size"] == 232
    assert preprocessing_of(ModelInfo(crop_size=299, resize_size=342)) == {
        **INCEPTION_V3, "interpolation": "bilinear"
    }  # fmt: skip

    class Older:  # an object from before the fields existed
        image_size = 224

    assert preprocessing_of(Older()) == preprocessing_of(VGG_META)  # type: ignore[arg-type]


def test_files_exported_before_the_fields_preprocess_as_before():
    """Metadata without resize_size/crop_size/interpolation reads as VGG's 256/224 bilinear."""
    props = {
        k: v
        for k, v in dataclasses.replace(VGG_META, **EFFICIENTNET_B0).to_props().items()
        if not k.endswith(("resize_size", "crop_size", "interpolation"))
    }
    old = ModelMetadata.from_props(props)
    assert preprocessing_of(old) == {
        "resize_size": 256,
        "crop_size": 224,
        "interpolation": "bilinear",
    }
    image = load_image(SAMPLES / "coffee.jpg")
    np.testing.assert_array_equal(
        model_view(image, 64, **preprocessing_of(old)),
        T.Compose([T.Resize(73), T.CenterCrop(64), T.PILToTensor()])(image)
        .permute(1, 2, 0)
        .numpy(),
    )
    new = ModelMetadata.from_props(dataclasses.replace(VGG_META, **EFFICIENTNET_B0).to_props())
    assert preprocessing_of(new) == EFFICIENTNET_B0


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"interpolation": "nearest"}, r"interpolation must be one of \['bicubic', 'bilinear'\]"),
        ({"interpolation": "BICUBIC"}, "got 'BICUBIC'"),
        ({"resize_size": 200}, r"resize_size \(200\) must be at least crop_size \(224\)"),
        ({"crop_size": 0}, "positive integers"),
    ],
)
def test_unusable_preprocessing_is_refused(fields, problem):
    with pytest.raises(ValueError, match=problem):
        preprocessing_of(dataclasses.replace(VGG_META, **fields))
    with pytest.raises(ValueError, match=problem):
        model_crop(100, 80, 32, **{**preprocessing_of(VGG_META), **fields})


def test_cam_to_image_follows_the_weights_crop():
    """232/224 crops less than 256/224: the map covers more of the original, and only that."""
    width, height, size = 300, 180, 64
    ramp = np.tile(np.linspace(0, 255, width), (height, 1))
    pixels = np.stack([ramp, ramp, ramp], 2).round().astype(np.uint8)
    image = Image.fromarray(pixels)
    seen = {}
    for name, weights in (("vgg", {}), ("resnet50", RESNET50)):
        crop = model_crop(width, height, size, **weights)
        view = view_of(image, crop)
        np.testing.assert_array_equal(view, model_view(image, size, **weights))
        placed = cam_to_image(view[..., 0] / 255.0, crop)
        seen[name] = ~np.isnan(placed)
        short = min(crop.resized)
        # the rows the map covers: size / short of the height, the crop of the resized image
        assert abs(seen[name].any(axis=1).sum() - height * size / short) <= 1
        middle = height // 2
        first, last = np.flatnonzero(seen[name][middle])[[0, -1]]
        inner = slice(first + 4, last - 4)
        assert np.abs(placed[middle, inner] - ramp[middle, inner] / 255.0).max() < 0.01
    assert seen["resnet50"].sum() > seen["vgg"].sum()
    assert (seen["resnet50"] | seen["vgg"] == seen["resnet50"]).all()  # VGG's window inside


def test_view_of_refuses_a_crop_of_another_image():
    image = load_image(SAMPLES / "cat.jpg")
    with pytest.raises(ValueError, match="computed for a"):
        view_of(image, model_crop(image.width + 1, image.height, 32))


# --------------------------------------------------------------------------- decoding


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # stored: left half red, right half blue
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left half goes to the top
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif))
    image = load_image(path)
    assert image.size == (20, 40)
    top, bottom = np.asarray(image)[5, 10].astype(int), np.asarray(image)[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_modes_are_converted_to_rgb():
    gray = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8))
    palette = gray.convert("P")
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # no black, full magenta + yellow = red
    cases = {
        "L": (encode(gray, "PNG"), np.repeat(np.asarray(gray)[..., None], 3, 2)),
        "P": (encode(palette, "GIF"), np.asarray(palette.convert("RGB"))),
        "CMYK": (encode(cmyk, "JPEG", quality=100), np.full((4, 4, 3), (255, 0, 0), np.uint8)),
    }
    for mode, (data, expected) in cases.items():
        image = load_image(data, name=mode)
        assert image.mode == "RGB", mode
        np.testing.assert_allclose(np.asarray(image), expected, atol=3, err_msg=mode)


def test_alpha_is_composited_on_white():
    pixels = np.zeros((2, 3, 4), np.uint8)
    pixels[..., :3] = (200, 0, 0)  # red under every pixel
    pixels[..., 3] = [[0, 255, 128], [0, 255, 128]]  # transparent, opaque, half
    image = load_image(encode(Image.fromarray(pixels, "RGBA"), "PNG"))
    rgb = np.asarray(image)
    np.testing.assert_array_equal(rgb[0, 0], (255, 255, 255))  # transparent: white, not red
    np.testing.assert_array_equal(rgb[0, 1], (200, 0, 0))
    np.testing.assert_allclose(rgb[0, 2], (228, 127, 127), atol=1)  # 128/255 red over white
    gray_alpha = Image.fromarray(np.array([[[10, 0], [10, 255]]], np.uint8), "LA")
    np.testing.assert_array_equal(
        np.asarray(load_image(encode(gray_alpha, "PNG"))), [[[255] * 3, [10] * 3]]
    )


def test_sixteen_bit_and_float_images_are_scaled_to_eight_bits():
    values = np.array([[0, 257, 32896, 65535]], np.uint16)  # 0, 1, 128, 255 in 8 bits
    for fmt in ("PNG", "TIFF"):
        image = load_image(encode(Image.fromarray(values), fmt), name=fmt)
        assert image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image)[..., 1], [[0, 1, 128, 255]], err_msg=fmt)
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F")
    np.testing.assert_array_equal(
        np.asarray(load_image(encode(floats, "TIFF")))[..., 0], [[0, 128, 255]]
    )


def test_gif_gives_its_first_frame():
    red, blue = Image.new("RGB", (6, 6), (255, 0, 0)), Image.new("RGB", (6, 6), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    np.testing.assert_array_equal(np.asarray(load_image(data))[3, 3], (255, 0, 0))


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "BMP", "TIFF", "JPEG"])
def test_formats_decode_and_path_equals_bytes(tmp_path, fmt):
    source = load_image(SAMPLES / "cat.jpg").resize((40, 30))
    options = (
        {"lossless": True}
        if fmt == "WEBP"
        else {"quality": 100, "subsampling": 0}
        if fmt == "JPEG"
        else {}
    )
    data = encode(source, fmt, **options)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    from_path, from_bytes = np.asarray(load_image(path)), np.asarray(load_image(data))
    np.testing.assert_array_equal(from_path, from_bytes)
    tolerance = 6 if fmt == "JPEG" else 0
    np.testing.assert_allclose(from_path, np.asarray(source), atol=tolerance)


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Unusable files, each with a phrase its error must contain."""
    jpeg = (SAMPLES / "cat.jpg").read_bytes()
    files = {
        "text.jpg": (b"this is not an image\n", "not an image file"),
        "empty.png": (b"", "empty file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "huge.png": (png_declaring(100_000, 100_000), "decompression bomb"),
        # over MAX_IMAGE_PIXELS but under twice it: PIL only warns; it must still be refused
        "large.png": (png_declaring(10_000, 10_000), "decompression bomb"),
    }
    out = {}
    for name, (data, phrase) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, phrase)
    return out


def test_bad_files_raise_image_error_naming_file_and_problem(tmp_path):
    cases = bad_inputs(tmp_path)
    cases["missing.jpg"] = (tmp_path / "missing.jpg", "no such file")
    cases["folder"] = (tmp_path, "is a directory")
    for name, (path, phrase) in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # nothing may leak out as a warning
            with pytest.raises(ImageError, match=phrase) as info:
                load_image(path)
        assert str(path) in str(info.value), name
        assert isinstance(info.value, ValueError)
    with pytest.raises(ImageError, match=r"^upload\.png: not an image"):
        load_image(b"GIF89a-but-not-really", name="upload.png")


def test_bomb_check_holds_in_threads():
    data = png_declaring(10_000, 10_000)
    filters = list(warnings.filters)
    errors: list[BaseException | None] = []

    def decode():
        try:
            load_image(data)
            errors.append(None)
        except ImageError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=decode) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 8 and all(isinstance(e, ImageError) for e in errors)
    assert warnings.filters == filters  # the temporary filter is gone, the others restored


# --------------------------------------------------------------------------- overlays


def test_colormap_endpoints_match_matplotlib_definitions():
    expected = {  # matplotlib's colors at 0 and 1
        "jet": ((0, 0, 128), (128, 0, 0)),
        "viridis": ((68, 1, 84), (253, 231, 37)),
        "inferno": ((0, 0, 4), (252, 255, 164)),
        "turbo": ((48, 18, 59), (122, 4, 3)),
    }
    assert set(expected) == set(COLORMAPS)
    for name, (low, high) in expected.items():
        lut = colormap_lut(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
        np.testing.assert_allclose(lut[0], low, atol=1)
        np.testing.assert_allclose(lut[-1], high, atol=1)
    # jet at x = 96/255 by hand from its segments: red 0->1 over [0.35, 0.66], green 1 on
    # [0.375, 0.64], blue 1->0 over [0.34, 0.65]
    x = 96 / 255
    by_hand = ((x - 0.35) / 0.31 * 255, 255, (1 - (x - 0.34) / 0.31) * 255)
    np.testing.assert_allclose(colormap_lut("jet")[96], by_hand, atol=0.5)


def test_colormaps_agree_with_matplotlib():
    matplotlib = pytest.importorskip("matplotlib")
    for name in COLORMAPS:
        ref = matplotlib.colormaps[name].resampled(256)(np.linspace(0, 1, 256))[:, :3] * 255
        assert np.abs(colormap_lut(name).astype(float) - ref).max() <= 1.6, name
    assert colormap_lut("plasma").shape == (256, 3)  # a name only matplotlib knows


def test_unknown_colormap_names_the_choices():
    with pytest.raises(ValueError, match="jet, viridis, inferno, turbo"):
        colormap_lut("no-such-map")


def test_overlay_blends_and_leaves_unseen_pixels_alone():
    image = np.full((4, 5, 3), 100, np.uint8)
    cam = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    np.testing.assert_array_equal(overlay(image, cam, alpha=0.0), image)
    np.testing.assert_array_equal(overlay(image, cam, alpha=1.0), apply_colormap(cam))
    half = overlay(image, cam, "viridis", 0.5).astype(int)
    np.testing.assert_allclose(half, (100 + apply_colormap(cam, "viridis").astype(int)) / 2, atol=1)
    cam[1, 2] = np.nan
    out = overlay(image, cam, alpha=0.7)
    np.testing.assert_array_equal(out[1, 2], image[1, 2])
    assert (out[0, 0] != image[0, 0]).any()
    with pytest.raises(ValueError, match="differs from the image"):
        overlay(image, cam[:3])
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, cam, alpha=1.5)


def test_save_png_and_npy_write_complete_files_only(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    path = save_png(pixels, tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), pixels)
    save_npy(pixels[..., 0].astype(np.float32), tmp_path / "a.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), pixels[..., 0])
    with pytest.raises(RuntimeError), atomic_file(tmp_path / "b.png") as f:
        f.write(b"half a PNG")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "a.png"]
    with pytest.raises(ValueError, match="uint8"):
        save_png(pixels.astype(np.float32), tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()
