"""Regression tests for what fuzzing the image-reading path found (fuzz/fuzz_images.py), and a
short hypothesis-bytes property test of its contract: any bytes give an RGB image with a finite
[3, S, S] model input, or raise ImageError.

Finding 1 (atheris, out of memory): very elongated images. The shorter side is resized to
256/224 of S before the center crop, so a 1 x 20,000 PNG (157 bytes) made `model_view` ask PIL
for 256 x 5,120,000 pixels (3.9 GB) at S = 224; the fuzzer hit it as a 391-byte TIFF declaring
6 x 65,540 32-bit pixels. Fixed: above FULL_RESIZE_LIMIT pixels only the crop window is resampled.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gradcam_fast.io.images import (
    FULL_RESIZE_LIMIT,
    ImageError,
    cam_to_image,
    load_image,
    model_crop,
    model_view,
    preprocess,
)

HARNESS = Path(__file__).resolve().parent.parent / "fuzz" / "fuzz_images.py"


def _harness():
    spec = importlib.util.spec_from_file_location("fuzz_images", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fuzz_images = _harness()


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


@pytest.fixture
def resize_sizes(monkeypatch) -> list[tuple[int, int]]:
    """Records the output size of every PIL resize; refuses one over FULL_RESIZE_LIMIT pixels
    before it allocates (so a regression fails cleanly instead of exhausting memory)."""
    sizes: list[tuple[int, int]] = []
    original = Image.Image.resize

    def resize(self, size, *args, **kwargs):
        sizes.append(tuple(size))
        assert size[0] * size[1] <= FULL_RESIZE_LIMIT, (
            f"resize to {size} would need too much memory"
        )
        return original(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", resize)
    return sizes


ELONGATED = {
    "tall-png": lambda: encoded(Image.new("RGB", (1, 20_000), (200, 10, 10)), "PNG"),
    "wide-png": lambda: encoded(Image.new("RGB", (20_000, 1), (200, 10, 10)), "PNG"),
    "bilevel-200k": lambda: encoded(Image.new("1", (1, 200_000), 1), "PNG"),
    # the fuzzer's finding, re-made: a 32-bit grayscale TIFF of 6 x 65,540 pixels
    "tiff-I-6x65540": lambda: encoded(
        Image.new("I", (6, 65_540), 70_000), "TIFF", compression="tiff_adobe_deflate"
    ),
}


# The weights' preprocessing: VGG's (the defaults), and the 232/224 bicubic of other weights.
PREPROCESSING = {
    "vgg": {},
    "232-bicubic": {"resize_size": 232, "crop_size": 224, "interpolation": "bicubic"},
}


@pytest.mark.parametrize("name", sorted(ELONGATED))
@pytest.mark.parametrize("size", [224, 32])
@pytest.mark.parametrize("weights", sorted(PREPROCESSING))
def test_elongated_images_preprocess_in_bounded_memory(resize_sizes, name, size, weights):
    data = ELONGATED[name]()
    assert len(data) < 3000  # tiny files
    image = load_image(data, name=name)
    x = preprocess(image, size, **PREPROCESSING[weights])
    assert x.shape == (3, size, size) and bool(x.isfinite().all())
    assert resize_sizes and max(w * h for w, h in resize_sizes) <= FULL_RESIZE_LIMIT
    # a uniform image stays uniform: the window was resampled from the right pixels
    assert float(x.amax(dim=(1, 2)).sub(x.amin(dim=(1, 2))).abs().max()) < 1e-6
    crop = model_crop(image.width, image.height, size, **PREPROCESSING[weights])
    placed = cam_to_image(np.ones((size, size), np.float32), crop)
    assert placed.shape == (image.height, image.width)
    assert np.isnan(placed).any() and np.nanmin(placed) == 1.0  # the unseen part stays NaN


@pytest.mark.parametrize("weights", sorted(PREPROCESSING))
def test_window_resampling_is_within_one_level_of_resize_then_crop(weights):
    """Where both fit in memory, the bounded path equals torchvision's resize-then-crop to
    within one 8-bit level (PIL's filter coefficients round differently), with either filter."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20_000, 1, 3), dtype=np.uint8)
    pixels = np.cumsum(pixels, axis=0, dtype=np.uint8)  # some structure along the long side
    image = Image.fromarray(pixels, "RGB")
    size = 32
    c = model_crop(image.width, image.height, size, **PREPROCESSING[weights])
    assert c.resized[0] * c.resized[1] > FULL_RESIZE_LIMIT  # takes the bounded path
    resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    exact = image.resize(c.resized, resample[c.interpolation])
    exact = np.asarray(exact.crop((c.left, c.top, c.left + size, c.top + size)), dtype=int)
    got = model_view(image, size, **PREPROCESSING[weights]).astype(int)
    assert got.shape == exact.shape == (size, size, 3)
    assert np.abs(got - exact).max() <= 1
    assert (got != exact).mean() < 0.3


def test_ordinary_images_keep_exact_resize_then_crop():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 500, 3), np.uint8))
    c = model_crop(500, 300, 224)
    exact = image.resize(c.resized, Image.Resampling.BILINEAR).crop(
        (c.left, c.top, c.left + 224, c.top + 224)
    )
    np.testing.assert_array_equal(model_view(image, 224), np.asarray(exact))


@pytest.mark.parametrize("name", sorted(fuzz_images.seed_corpus()))
def test_seed_corpus_images_satisfy_the_contract(name):
    fuzz_images.check_bytes(fuzz_images.seed_corpus()[name])
    assert load_image(fuzz_images.seed_corpus()[name]).mode == "RGB"


@st.composite
def mutated_images(draw) -> bytes:
    """A seed image with a few bytes changed, cut or inserted; or plain random bytes."""
    seeds = fuzz_images.seed_corpus()
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(0, 6))):
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        kind = draw(st.sampled_from(["set", "cut", "insert"]))
        if kind == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[pos : pos + draw(st.integers(1, 32))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.one_of(mutated_images(), st.binary(max_size=256)))
def test_any_bytes_give_an_rgb_image_or_image_error(data):
    """check_bytes returns for a good image and for ImageError; any other exception fails."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Image, "MAX_IMAGE_PIXELS", fuzz_images.FUZZ_MAX_PIXELS)
        fuzz_images.check_bytes(data)


def test_the_harness_treats_only_image_error_as_a_refusal(monkeypatch):
    garbage = b"\x89PNG\r\n\x1a\n" + b"\0" * 10
    with pytest.raises(ImageError, match="not an image file"):
        load_image(garbage)
    fuzz_images.check_bytes(garbage)  # refused with ImageError: not a finding

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr("gradcam_fast.io.images.load_image", broken)
    with pytest.raises(KeyError):
        fuzz_images.check_bytes(garbage)  # anything else is a finding
