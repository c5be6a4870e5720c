"""Throughput of `gradcam-fast explain` on a folder of JPEGs, in images/s: decoding overlapped
with the session (the default, a thread pool decoding ahead and writing behind) against no
overlap (`--workers 0`: decode, run, write, one after the other), plus decoding alone, in one run.

Each timed round is a whole CLI run through `gradcam_fast.cli.main` (session opening, decoding,
the model, overlays and results.jsonl), so images/s is what a user sees. The profile comes from
$GRADCAM_BENCH_PROFILE like the rest of the suite: "tiny" (default, CI: a small seeded VGG at
32 px, 12 photos of 400 px) or "full" (VGG19 with seeded random weights at 224, 64 photos of
2048 px, about 3 megapixels each). Self-contained: it uses none of the suite's fixtures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from benchmarks.config import active_profile
from benchmarks.contenders import make_model
from benchmarks.photos import EXAMPLES
from gradcam_fast import export_onnx
from gradcam_fast.cli import EXIT_OK, main
from gradcam_fast.format.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from gradcam_fast.io.images import load_image, model_view, to_tensor

PROFILE = active_profile()
RUN = PROFILE.explain


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """RUN.images seeded JPEGs (quality 90) made from the sample photos: resized to
    RUN.side, each with its own random crop and flip so that no two files are the same."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    sources = [load_image(path) for path in sorted(EXAMPLES.glob("*.jpg"))]
    for i in range(RUN.images):
        image = sources[i % len(sources)]
        w, h = image.size
        left, top = rng.integers(0, w // 10 + 1), rng.integers(0, h // 10 + 1)
        image = image.crop((left, top, w - rng.integers(0, w // 10 + 1), h))
        scale = RUN.side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(folder / f"photo{i:03d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    model = make_model(PROFILE.model)
    return export_onnx(model, path, image_size=PROFILE.image_size, validate=False)


def _record(benchmark, seconds: float, mode: str) -> None:
    """images/s from pytest-benchmark's median (or the one untimed call under --benchmark-disable)."""
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats else seconds
    benchmark.extra_info.update(
        mode=mode, images=RUN.images, side=RUN.side, model=PROFILE.model,
        image_size=PROFILE.image_size, batch_size=RUN.batch_size,
        cpu_threads=torch.get_num_threads(), images_per_s=round(RUN.images / median, 2),
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["overlapped", "serial"])
def test_explain_folder_throughput(benchmark, photo_folder, model_file, tmp_path, mode):
    workers = RUN.workers if mode == "overlapped" else 0
    out = tmp_path / "out"
    argv = [
        "explain", str(photo_folder), "--out", str(out), "--model", str(model_file),
        "--device", "cpu", "--batch-size", str(RUN.batch_size), "--workers", str(workers),
        "--quiet", "--backend", "onnxruntime", "--precision", "float32",  # as before auto
    ]  # fmt: skip
    seconds = []

    def run_cli():
        start = time.perf_counter()
        assert main(argv) == EXIT_OK
        seconds.append(time.perf_counter() - start)

    benchmark.group = "explain-cli"
    benchmark.pedantic(run_cli, rounds=RUN.rounds, iterations=1, warmup_rounds=0)
    lines = (out / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == RUN.images and all("outputs" in r for r in records)
    _record(benchmark, min(seconds), mode)


def test_decode_alone_throughput(benchmark, photo_folder):
    """What the CLI's decoding costs without the model: load, resize + crop, normalize. The
    tensors decoded are checked against torchvision's evaluation transform of each file."""
    files = sorted(photo_folder.glob("*.jpg"))
    seconds = []
    decoded: list[torch.Tensor] = []

    def decode_all():
        start = time.perf_counter()
        tensors = [to_tensor(model_view(load_image(path), PROFILE.image_size)) for path in files]
        seconds.append(time.perf_counter() - start)
        decoded[:] = tensors

    benchmark.group = "explain-cli"
    benchmark.pedantic(decode_all, rounds=RUN.rounds, iterations=1, warmup_rounds=0)
    _record(benchmark, min(seconds), "decode-only")
    size = PROFILE.image_size
    resize, normalize = T.Resize(round(size * 256 / 224)), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    transform = T.Compose([resize, T.CenterCrop(size), T.ToTensor(), normalize])
    assert len(decoded) == len(files) == RUN.images
    for path, tensor in zip(files, decoded, strict=True):
        with Image.open(path) as image:
            expected = transform(image.convert("RGB"))
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6)
