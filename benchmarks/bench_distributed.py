"""Images/s of `explain-dataset` on Ray Data with 1 and 2 actors against the single-process
`explain`, on the same folder, the same model and the same CPUs, in one run.

A script, not a pytest-benchmark file (it defines no tests, so collecting it costs nothing):

    python benchmarks/bench_distributed.py                # VGG19 at 224, 64 images
    python benchmarks/bench_distributed.py --arch vgg11 --images 96 --json out.json

Each Ray run is timed end to end (`write_parquet` returns when every row is written), so it
includes starting the actors (a process each, importing torch and ONNX Runtime, opening the
model); that fixed cost is measured apart on a one-image folder. Both sides write one overlay
PNG per image, so they do the same work. Weights are random (seeded): they do not change the
cost, and nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"


def make_folder(root: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs made from the example images at sizes between 300 and 640 px wide."""
    from PIL import Image

    sources = [Image.open(p).convert("RGB") for p in sorted(EXAMPLES.glob("*.jpg"))]
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = sources[i % len(sources)]
        width = rng.randint(300, 640)
        height = max(32, width * image.height // image.width)
        path = root / f"img{i:05d}.jpg"
        image.resize((width, height)).save(path, quality=90)
        paths.append(path)
    return paths


def time_single_process(model: Path, paths: list[Path], out: Path, batch: int, cpus: int):
    """Seconds of `explain` (one session with `cpus` threads, 4 decode/write threads)."""
    from gradcam_fast import GradCAMSession
    from gradcam_fast.app.explain import explain

    session = GradCAMSession(model, device="cpu", intra_op_threads=cpus)
    explain(paths[:batch], session, out / "warmup", batch_size=batch, progress=False)
    start = time.perf_counter()
    records = explain(paths, session, out / "single", batch_size=batch, progress=False)
    seconds = time.perf_counter() - start
    assert all("error" not in r for r in records), "the benchmark images must all decode"
    return seconds


def time_ray(model: Path, files: list[str], out: Path, actors: int, batch: int, cpus: int):
    """Seconds of explain_dataset(...).write_parquet on the running Ray, actors included."""
    import pyarrow.parquet as pq

    from gradcam_fast.services.ray_data import explain_dataset

    dest = out / f"ray-{actors}-{len(files)}"
    start = time.perf_counter()
    explain_dataset(
        files,
        model,
        actors=actors,
        batch_size=batch,
        cpus_per_actor=cpus / actors,
        overlays_dir=dest / "overlays",
        extensions=None,
    ).write_parquet(str(dest / "parquet"), ray_remote_args={"num_cpus": 0})
    seconds = time.perf_counter() - start
    table = pq.read_table(dest / "parquet", columns=["error"])
    assert table.num_rows == len(files) and table.column("error").null_count == len(files)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vgg19")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import ray

    from gradcam_fast import export_onnx
    from gradcam_fast.runtime.session import cpu_count

    cpus = cpu_count()
    work = Path(tempfile.mkdtemp(prefix="bench_distributed_"))
    try:
        paths = make_folder(work / "images", args.images)
        files = [str(p) for p in paths]
        model = export_onnx(
            args.arch, work / "model.onnx", image_size=args.image_size, weights="random",
            validate=False,
        )  # fmt: skip
        figures: dict[str, float] = {}
        seconds = time_single_process(model, paths, work, args.batch_size, cpus)
        figures["single_process_images_per_s"] = args.images / seconds

        start = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        figures["ray_init_s"] = time.perf_counter() - start
        for actors in (1, 2):
            startup = time_ray(model, files[:1], work, actors, args.batch_size, cpus)
            seconds = time_ray(model, files, work, actors, args.batch_size, cpus)
            figures[f"ray_{actors}_actor_images_per_s"] = args.images / seconds
            figures[f"ray_{actors}_actor_fixed_s"] = startup
            steady = seconds - startup  # noise can make it negative on tiny runs
            rate = (args.images - 1) / steady if steady > 0 else float("nan")
            figures[f"ray_{actors}_actor_images_per_s_after_startup"] = rate
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    config = {
        "arch": args.arch,
        "image_size": args.image_size,
        "images": args.images,
        "batch_size": args.batch_size,
        "cpus": cpus,
        "python": platform.python_version(),
        "ray": ray.__version__,
    }
    print(json.dumps(config))
    base = figures["single_process_images_per_s"]
    print(f"{'run':<28}{'images/s':>10}{'vs single':>11}{'fixed s':>9}")
    print(f"{'single-process explain':<28}{base:>10.2f}{1.0:>11.2f}{'':>9}")
    for actors in (1, 2):
        rate = figures[f"ray_{actors}_actor_images_per_s"]
        fixed = figures[f"ray_{actors}_actor_fixed_s"]
        print(f"{f'Ray, {actors} actor(s)':<28}{rate:>10.2f}{rate / base:>11.2f}{fixed:>9.1f}")
        rate = figures[f"ray_{actors}_actor_images_per_s_after_startup"]
        print(f"{'  after the fixed cost':<28}{rate:>10.2f}{rate / base:>11.2f}")
    print(f"ray.init: {figures['ray_init_s']:.1f} s (not in any figure above)")
    if args.json:
        args.json.write_text(json.dumps({"config": config, "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
