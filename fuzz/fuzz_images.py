"""Fuzz the image-reading path: bytes -> `load_image` -> `model_view`/`preprocess`.

The contract under test: any bytes either give an RGB image whose preprocessed tensor is a finite
float32 [3, S, S], or raise `ImageError` (a ValueError naming the problem). Anything else (another
exception type, a crash, a hang, a memory blow-up) is a finding.

Run with atheris (coverage-guided; `pip install atheris`, optional, not a CI dependency):

    python fuzz/fuzz_images.py -max_total_time=180 -rss_limit_mb=3072 -timeout=20 \
        /tmp/fuzz_corpus

or, without atheris, with hypothesis generating bytes (mutations of a seed corpus of small images):

    python fuzz/fuzz_images.py --hypothesis --seconds 180

Findings are kept as regression tests in tests/test_fuzz_images.py.
"""

from __future__ import annotations

import io
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["check_bytes", "seed_corpus"]

SIZE = 32  # preprocess size: small so each input is cheap; the crop arithmetic is the same
# Memory proportional to the pixel count is expected, so the fuzzer caps images at this many
# pixels (a few tens of MB decoded) and flags any input that raises the process's peak RSS by
# more than RSS_GROWTH_MB: memory out of proportion to the image, e.g. a 157-byte 1 x 20000 PNG
# that made model_view allocate 4 GB before the fix.
FUZZ_MAX_PIXELS = 4_000_000
RSS_GROWTH_MB = 400


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_corpus() -> dict[str, bytes]:
    """Small valid images in every format and mode load_image has a path for."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (7, 5, 3), dtype=np.uint8), "RGB")
    out: dict[str, bytes] = {}

    def save(name: str, image: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        image.save(buf, fmt, **kw)
        out[name] = buf.getvalue()

    save("rgb.png", rgb, "PNG")
    save("rgba.png", rgb.convert("RGBA"), "PNG")
    save("la.png", rgb.convert("LA"), "PNG")
    save("p.png", rgb.convert("P"), "PNG", transparency=0)
    save("i16.png", Image.fromarray(rng.integers(0, 65535, (6, 4), dtype=np.uint16)), "PNG")
    save("one.png", rgb.convert("1"), "PNG")
    save("rgb.jpg", rgb, "JPEG", quality=80)
    save("cmyk.jpg", rgb.convert("CMYK"), "JPEG")
    save("prog.jpg", rgb, "JPEG", progressive=True)
    save("rgb.gif", rgb.convert("P"), "GIF")
    anim = [rgb.convert("P"), rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    buf = io.BytesIO()
    anim[0].save(buf, "GIF", save_all=True, append_images=anim[1:])
    out["anim.gif"] = buf.getvalue()
    save("rgb.bmp", rgb, "BMP")
    save("rgb.tif", rgb, "TIFF")
    save("f.tif", Image.fromarray(rng.random((4, 6), dtype=np.float32), "F"), "TIFF")
    save("rgb.webp", rgb, "WEBP", lossless=True)
    save("rgb.ico", rgb, "ICO")
    save("rgb.ppm", rgb, "PPM")
    save("rgb.tga", rgb, "TGA")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate
    save("exif.jpg", rgb, "JPEG", exif=exif)
    return out


def check_bytes(data: bytes) -> None:
    """The contract: an RGB image with a finite [3, SIZE, SIZE] input, or ImageError."""
    from gradcam_fast.io.images import ImageError, load_image, model_crop, preprocess

    try:
        image = load_image(data, name="fuzz")
    except ImageError:
        return
    assert image.mode == "RGB", image.mode
    assert image.width >= 1 and image.height >= 1
    x = preprocess(image, SIZE)
    assert x.shape == (3, SIZE, SIZE) and x.dtype.is_floating_point, x.shape
    assert bool(x.isfinite().all())
    model_crop(image.width, image.height, SIZE)


def _atheris_main(argv: list[str]) -> None:
    import atheris
    import torch  # noqa: F401  (imported first: too big to instrument)

    with atheris.instrument_imports(include=["PIL", "gradcam_fast.io.images"]):
        import PIL.Image

        import gradcam_fast.io.images  # noqa: F401

        PIL.Image.init()  # load every format plugin now, instrumented

    warnings.simplefilter("ignore")  # corrupt TIFF tags warn on every input; not findings
    PIL.Image.MAX_IMAGE_PIXELS = FUZZ_MAX_PIXELS
    for data in seed_corpus().values():
        check_bytes(data)
    baseline = _peak_rss_mb()

    def one(data: bytes) -> None:
        check_bytes(data)
        peak = _peak_rss_mb()
        if peak > baseline + RSS_GROWTH_MB:
            raise MemoryError(
                f"peak RSS {peak:.0f} MB, {peak - baseline:.0f} MB over the warmed-up baseline "
                f"for a {len(data)}-byte input (images are capped at {FUZZ_MAX_PIXELS} pixels)"
            )

    corpus = [a for a in argv[1:] if not a.startswith("-")]
    for folder in corpus:  # seed an empty corpus folder with valid images
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        if not any(path.iterdir()):
            for name, data in seed_corpus().items():
                (path / name).write_bytes(data)
    atheris.Setup(argv, one)
    atheris.Fuzz()


def _hypothesis_main(seconds: float) -> int:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    warnings.simplefilter("ignore")  # corrupt TIFF tags warn on every input; not findings
    Image.MAX_IMAGE_PIXELS = FUZZ_MAX_PIXELS
    seeds = list(seed_corpus().values())

    @st.composite
    def mutated(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 8))):
            kind = draw(st.sampled_from(["flip", "cut", "insert"]))
            pos = draw(st.integers(0, max(len(data) - 1, 0)))
            if kind == "flip" and data:
                data[pos] = draw(st.integers(0, 255))
            elif kind == "cut":
                del data[pos : pos + draw(st.integers(1, 64))]
            else:
                data[pos:pos] = draw(st.binary(max_size=16))
        return bytes(data)

    deadline = time.monotonic() + seconds
    rounds = 0
    while time.monotonic() < deadline:
        rounds += 1

        @settings(
            max_examples=500,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.one_of(mutated(), st.binary(max_size=512)))
        def prop(data: bytes) -> None:
            check_bytes(data)

        prop()
    print(f"hypothesis: {rounds * 500} inputs in {seconds:.0f} s, no finding")
    return 0


if __name__ == "__main__":
    if "--hypothesis" in sys.argv:
        i = sys.argv.index("--seconds") if "--seconds" in sys.argv else -1
        sys.exit(_hypothesis_main(float(sys.argv[i + 1]) if i > 0 else 60.0))
    _atheris_main(sys.argv)
