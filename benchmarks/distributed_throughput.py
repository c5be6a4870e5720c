"""Images/s of `explain-dataset` on Ray Data with 1 and 2 actors against the single-process
`explain`, on the same folder, the same model and the same CPUs, in one run.

    python -m benchmarks.distributed_throughput                # VGG19 at 224, 64 images
    python -m benchmarks.distributed_throughput --arch vgg11 --images 96 --json out.json

Each Ray run is timed end to end, starting the actors included; that fixed cost is measured
apart on a one-image folder. Both sides write one overlay PNG per image. Weights are random.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.photos import jpegs
from benchmarks.tables import markdown_table

__all__ = ["main"]


def make_folder(root: Path, count: int) -> list[Path]:
    """`count` JPEGs (benchmarks.photos.jpegs: 300 to 640 px wide) written under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    paths = [root / f"img{i:05d}.jpg" for i in range(count)]
    for path, data in zip(paths, jpegs(count), strict=True):
        path.write_bytes(data)
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
    dataset = explain_dataset(files, model, actors=actors, batch_size=batch, cpus_per_actor=cpus / actors,
                              overlays_dir=dest / "overlays", extensions=None)  # fmt: skip
    dataset.write_parquet(str(dest / "parquet"), ray_remote_args={"num_cpus": 0})
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
        options = {"image_size": args.image_size, "weights": "random", "validate": False}
        model = export_onnx(args.arch, work / "model.onnx", **options)
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

    config = {k: getattr(args, k) for k in ("arch", "image_size", "images", "batch_size")}
    config |= {"cpus": cpus, "python": platform.python_version(), "ray": ray.__version__}
    print(json.dumps(config))
    base = figures["single_process_images_per_s"]
    rows = [("single-process explain", base, 1.0, "")]
    for actors in (1, 2):
        rate, fixed = (figures[f"ray_{actors}_actor_{k}"] for k in ("images_per_s", "fixed_s"))
        rows.append((f"Ray, {actors} actor(s)", rate, rate / base, f"{fixed:.1f}"))
        rate = figures[f"ray_{actors}_actor_images_per_s_after_startup"]
        rows.append(("  after the fixed cost", rate, rate / base, ""))
    header = "run | images/s | vs single | fixed s"
    print("\n".join(markdown_table(header, "lrrr", "{} | {:.2f} | {:.2f} | {}", rows)))
    print(f"ray.init: {figures['ray_init_s']:.1f} s (not in any figure above)")
    if args.json:
        args.json.write_text(json.dumps({"config": config, "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
