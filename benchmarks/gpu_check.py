"""One command for a GPU machine (no network needed): CUDA tests, then Grad-CAM timings.

    python benchmarks/gpu_check.py [--out DIR] [--quick]

1. runs the `cuda` tests (tests/test_cuda.py);
2. times, at batch 1, 8 and 64 on VGG19 at 224 (seeded random weights: weights do not change
   the cost): the eager hook (float32, and float16 under autocast), the plain forward (the
   floor), the torch backend (float32 / float16, with and without CUDA graphs) and, when
   onnxruntime-gpu is importable, ONNX Runtime's CUDA provider (float32 / float16, with and
   without CUDA graphs) and, when ONNX Runtime has TensorRT, its TensorRT provider (float32 /
   float16; checked with the tf32 limits, as TensorRT may use TF32). Each contender's maps are checked against the float32 eager reference
   before it is timed. Medians over CUDA-event-timed calls after warm-up;
3. prints a table last and writes gpu_check.json (and .md) under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradcam_fast import GradCAMSession, eager_gradcam, export_onnx, load_vgg  # noqa: E402
from gradcam_fast.compare import compare_with_reference, failing_figures  # noqa: E402
from gradcam_fast.ort_backend import TENSORRT_EP, available_devices  # noqa: E402

SIZE = 224
BATCHES = (1, 8, 64)
SHORT = {"float32": "fp32", "tf32": "tf32", "float16": "fp16"}
LIMITS_OF = {"float32": "float32", "tf32": "float16", "float16": "float16"}  # tf32: 10-bit mantissa


def cuda_time(fn, warmup: int, iters: int) -> list[float]:
    """Milliseconds of each call, measured with CUDA events after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def run_cuda_tests(out: Path) -> str:
    started = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "cuda",
            "tests/test_cuda.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=400,
    )
    (out / "cuda_tests.log").write_text(proc.stdout + proc.stderr)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
    return f"{summary} ({time.perf_counter() - started:.0f} s, exit {proc.returncode})"


def contenders(model, tmp: Path, quick: bool):
    """(name, precision, session-or-callable factory) for every path available here."""
    yield (
        "eager hook fp32",
        "float32",
        lambda: lambda x, t: _no_tf32(lambda: eager_gradcam(model_cuda, x, t)),
    )
    yield (
        "eager hook (torch defaults: TF32 convs)",
        "tf32",
        lambda: lambda x, t: eager_gradcam(model_cuda, x, t),
    )
    yield (
        "eager hook fp16 (autocast)",
        "float16",
        lambda: lambda x, t: _autocast(lambda: eager_gradcam(model_cuda, x, t)),
    )
    for precision in ("float32", "tf32", "float16"):
        for graphs in (False, True) if not quick else (True,):
            name = f"torch backend {SHORT[precision]}" + (" + CUDA graphs" if graphs else "")
            yield (
                name,
                precision,
                lambda p=precision, g=graphs: GradCAMSession.from_model(
                    model, image_size=SIZE, device="cuda", precision=p, cuda_graphs=g
                ),
            )
    if "cuda" in available_devices():
        for precision in ("float32", "float16"):
            path = export_onnx(
                model,
                tmp / f"{precision}.onnx",
                image_size=SIZE,
                fp16=precision == "float16",
                validate=False,
            )
            for graphs in (False, True):
                name = f"onnxruntime CUDA {SHORT[precision]}" + (" + CUDA graphs" if graphs else "")
                yield (
                    name,
                    precision,
                    lambda p=path, g=graphs: GradCAMSession(p, device="cuda", cuda_graphs=g),
                )
            if TENSORRT_EP in ort.get_available_providers():  # TF32 kernels allowed: tf32 limits
                yield (
                    f"onnxruntime TensorRT {SHORT[precision]}",
                    "tf32" if precision == "float32" else precision,
                    lambda p=path: GradCAMSession(p, device="cuda", tensorrt=True),
                )


def time_contender(name, precision, factory, images, reference) -> list[tuple]:
    """Check one contender's maps against the reference, then time it at every batch size."""
    started = time.perf_counter()
    run = factory()
    setup = time.perf_counter() - started
    got = run(images[8], reference.target_classes)
    errors = compare_with_reference(got.to("cpu"), reference)
    failed = failing_figures(errors, LIMITS_OF[precision])
    verdict = "ok" if not failed else f"WRONG {failed}"
    rows = []
    for b in BATCHES:
        t = torch.full((b, 1), -1, device="cuda")
        iters = 10 if name.startswith("eager") else 40
        ms = statistics.median(cuda_time(lambda b=b, t=t: run(images[b], t), 3, iters))
        rows.append((name, precision, b, ms, verdict))
    print(
        f"{name}: setup {setup:.1f} s, check {verdict}, cams_lowres error "
        f"{errors['cams_lowres']:.1e}, weights error {errors['weights']:.1e}, "
        f"ms by batch {[round(r[3], 2) for r in rows]}",
        flush=True,
    )
    return rows


def _no_tf32(fn):
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        return fn()
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def _autocast(fn):
    with torch.autocast("cuda", dtype=torch.float16):
        return fn()


model_cuda = None


def main() -> int:
    global model_cuda
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--quick", action="store_true", help="fewer variants and iterations")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return 1
    warnings.simplefilter("ignore")
    torch.backends.cudnn.benchmark = True  # every contender and the floor get autotuned convs
    device_name = torch.cuda.get_device_name()
    tests = "skipped" if args.skip_tests else run_cuda_tests(args.out)
    print(f"cuda tests: {tests}", flush=True)

    model = load_vgg("vgg19", "random")
    model_cuda = load_vgg("vgg19", "random").cuda()
    floor_net = {
        "float32": copy.deepcopy(model_cuda).to(memory_format=torch.channels_last),
        "float16": copy.deepcopy(model_cuda).half().to(memory_format=torch.channels_last),
    }
    gen = torch.Generator().manual_seed(0)
    images = {b: torch.randn(b, 3, SIZE, SIZE, generator=gen).cuda() for b in BATCHES}
    reference = eager_gradcam(model, images[8].cpu(), None)  # float32 on the CPU: the oracle

    rows = []
    floor = {}
    with torch.inference_mode():
        for b in BATCHES:
            for precision in ("float32", "tf32", "float16"):
                half = precision == "float16"
                net = floor_net["float16" if half else "float32"]
                x = (images[b].half() if half else images[b]).contiguous(
                    memory_format=torch.channels_last
                )
                fn = (
                    (lambda n=net, x=x: _no_tf32(lambda: n(x)))
                    if precision == "float32"
                    else (lambda n=net, x=x: n(x))
                )
                ms = statistics.median(cuda_time(fn, 5, 30))
                floor[(b, precision)] = ms
                rows.append(("plain forward (floor)", precision, b, ms, "-"))
    with tempfile.TemporaryDirectory() as tmp:
        for name, precision, factory in contenders(model, Path(tmp), args.quick):
            try:
                rows.extend(time_contender(name, precision, factory, images, reference))
            except Exception as exc:  # report and go on: one broken path must not hide the rest
                print(f"{name}: FAILED {type(exc).__name__}: {exc}", flush=True)
                rows.extend(
                    (name, precision, b, float("nan"), f"error: {exc}"[:80]) for b in BATCHES
                )
            torch.cuda.empty_cache()

    eager = {(r[2]): r[3] for r in rows if r[0] == "eager hook fp32"}
    lines = [
        f"# gpu_check on {device_name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}",
        f"cuda tests: {tests}",
        "",
        "| contender | precision | batch | median ms | images/s | vs eager fp32 | vs floor | check |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, precision, b, ms, verdict in rows:
        lines.append(
            f"| {name} | {precision} | {b} | {ms:.2f} | {b * 1000 / ms:,.0f} | "
            f"{eager[b] / ms:.2f}x | {ms / floor[(b, precision)]:.2f} | {verdict} |"
        )
    table = "\n".join(lines)
    (args.out / "gpu_check.md").write_text(table + "\n")
    (args.out / "gpu_check.json").write_text(
        json.dumps(
            {
                "device": device_name,
                "torch": torch.__version__,
                "tests": tests,
                "rows": [
                    dict(zip(("contender", "precision", "batch", "ms", "check"), r, strict=True))
                    for r in rows
                ],
            },
            indent=1,
        )
    )
    print(table)
    return 0 if all(r[4] in ("ok", "-") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
