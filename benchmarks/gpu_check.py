"""One command for a GPU machine (no network needed): CUDA tests, then Grad-CAM timings.

    python benchmarks/gpu_check.py [--out DIR] [--budget-s S] [--quick] [--skip-tests]
    python benchmarks/gpu_check.py --dry-run --out DIR      (no GPU: fake timings, same files)

1. exports VGG19 at 224 (seeded random weights: weights do not change the cost) once per
   precision, float32 and float16, each on its own (one failing export costs only its rows), into
   --exports (reused by a second run on the same machine, and by the tests);
2. runs the `cuda` tests (tests/test_cuda.py) on those exports, within --tests-timeout-s;
3. times, at batch 1, 8 and 64, most important first: the plain forward (the floor), the eager
   hook (float32, float16 under autocast), the torch backend and ONNX Runtime's CUDA provider
   (float32 / float16, with and without CUDA graphs), then the levers that may push the floor
   down (ONNX Runtime's prefer_nhwc and cuDNN EXHAUSTIVE search, the floor under CUDA graphs and
   in NCHW), the TF32 rows, and TensorRT where its library loads. Each contender's maps are checked
   against the float32 eager reference (NaN or Inf anywhere fails) before it is timed; medians
   over CUDA-event-timed calls after warm-up. Once --budget-s has passed since the start, the
   remaining contenders are recorded as skipped.

Written under --out as it goes: gpu_check.jsonl (one line per row and per phase, appended as
measured), gpu_check.md (the table, in the layout of gpu_results_h100.md: copy it to
gpu_results_<card>.md) and gpu_check.json, both rewritten after every contender, and
cuda_tests.log. A crash in one contender is recorded in its rows and the run goes on.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

SIZE = 224
BATCHES = (1, 8, 64)
SHORT = {"float32": "fp32", "tf32": "tf32", "float16": "fp16"}
LIMITS_OF = {"float32": "float32", "tf32": "float16", "float16": "float16"}  # tf32: 10-bit mantissa
EXPORTS_ENV = "GRADCAM_FAST_CUDA_EXPORTS"  # tests/test_cuda.py reads the exports from there
EAGER_FP32 = "eager hook fp32"
FLOOR = "plain forward (floor)"
TABLE_HEAD = (
    "| contender | precision | batch | median ms | images/s | vs eager fp32 | vs floor | check |\n"
    "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"
)


@dataclass
class Row:
    """One contender at one batch size; `ms` is None where nothing was timed."""

    contender: str
    precision: str
    batch: int
    ms: float | None
    check: str  # "ok", "-" (a floor: nothing to check), "WRONG ...", "error: ...", "skipped: ..."


@dataclass
class Contender:
    """A path to time: `make()` returns the callable `run(images, targets)` (a floor's ignores
    targets); floors are not checked."""

    name: str
    precision: str
    make: Callable[[], Callable]
    floor: bool = False


class Recorder:
    """Writes results under `out` as they come: a JSON line per row or phase (appended and
    flushed at once), and the whole table (md and json) again after every contender."""

    def __init__(self, out: Path, header: dict, started: float | None = None):
        self.out, self.header, self.rows, self.phases = out, header, [], []
        self.started = time.perf_counter() if started is None else started
        out.mkdir(parents=True, exist_ok=True)
        self._lines = (out / "gpu_check.jsonl").open("a", buffering=1)

    def _line(self, record: dict) -> None:
        self._lines.write(json.dumps(record) + "\n")
        self._lines.flush()
        os.fsync(self._lines.fileno())

    def phase(self, name: str, seconds: float, **extra) -> None:
        total = time.perf_counter() - self.started
        self.phases.append({"phase": name, "seconds": round(seconds, 2), **extra})
        self._line({"phase": name, "seconds": round(seconds, 2), "elapsed_s": round(total, 1)})
        print(f"[{total:6.1f} s] {name}: {seconds:.1f} s {extra or ''}", flush=True)

    def add(self, rows: list[Row]) -> None:
        for row in rows:
            self.rows.append(row)
            self._line(
                {"row": asdict(row), "elapsed_s": round(time.perf_counter() - self.started, 1)}
            )
        self.write_tables()

    def write_tables(self) -> None:
        _replace(self.out / "gpu_check.md", render_markdown(self.rows, self.header))
        record = {**self.header, "phases": self.phases, "rows": [asdict(r) for r in self.rows]}
        _replace(self.out / "gpu_check.json", json.dumps(record, indent=1))

    def close(self) -> None:
        self._lines.close()


def _replace(path: Path, text: str) -> None:
    """Write `text` to `path` whole or not at all (a run killed mid-write keeps the last table)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text if text.endswith("\n") else text + "\n")
    os.replace(tmp, path)


def render_markdown(rows: list[Row], header: dict) -> str:
    """The table of gpu_results_h100.md: ratios against the eager hook in float32 and against the
    floor of the same precision and batch, both from the same run."""
    eager = {r.batch: r.ms for r in rows if r.contender == EAGER_FP32 and r.ms}
    floor = {(r.batch, r.precision): r.ms for r in rows if r.contender == FLOOR and r.ms}
    lines = [
        f"# gpu_check on {header.get('device', '?')}, torch {header.get('torch', '?')}, "
        f"{header.get('date', '?')}",
        "",
        f"_Produced by `{header.get('command', '?')}`; driver {header.get('driver', '?')}, "
        f"CUDA {header.get('cuda', '?')}, cuDNN {header.get('cudnn', '?')}, onnxruntime "
        f"{header.get('onnxruntime', '?')}, VGG19 at {SIZE}, seeded random weights, K = 1; "
        "medians of CUDA-event-timed calls after warm-up; every contender checked against the "
        "float32 eager reference on the CPU first (column check)._",
        f"cuda tests: {header.get('tests', '?')}",
        "",
        TABLE_HEAD,
    ]
    for r in rows:
        timed = r.ms is not None and math.isfinite(r.ms) and r.ms > 0
        ms = f"{r.ms:.2f}" if timed else "-"
        rate = f"{r.batch * 1000 / r.ms:,.0f}" if timed else "-"
        vs_eager = f"{eager[r.batch] / r.ms:.2f}x" if timed and r.batch in eager else "-"
        base = floor.get((r.batch, r.precision))
        vs_floor = f"{r.ms / base:.2f}" if timed and base else "-"
        check = r.check.replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {r.contender} | {r.precision} | {r.batch} | {ms} | {rate} | {vs_eager} | "
            f"{vs_floor} | {check} |"
        )
    return "\n".join(lines) + "\n"


def run_contenders(
    contenders: list[Contender],
    measure: Callable[[Contender], list[Row]],
    recorder: Recorder,
    budget_s: float,
    now: Callable[[], float] = time.perf_counter,
) -> None:
    """Measure each contender in order, recording its rows as soon as it is done; a contender
    that raises gets error rows and the next one runs; once `budget_s` has passed since the
    recorder's start, the rest are recorded as skipped."""
    for c in contenders:
        started = now()
        if started - recorder.started > budget_s:
            skipped = f"skipped: budget of {budget_s:.0f} s spent"
            recorder.add([Row(c.name, c.precision, b, None, skipped) for b in BATCHES])
            continue
        try:
            rows = measure(c)
        except Exception as exc:  # report and go on: one broken path must not hide the rest
            text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else repr(exc)
            print(f"{c.name}: FAILED {text}", flush=True)
            rows = [Row(c.name, c.precision, b, None, f"error: {text[:160]}") for b in BATCHES]
        recorder.add(rows)
        recorder.phase(c.name, now() - started)


def verdict(got, reference, precision: str) -> tuple[str, dict]:
    """ "ok", or "WRONG" with the failing figures: beyond the precision's limits, or not finite
    (NaN passes a `>` comparison, so finiteness is checked here on its own)."""
    from gradcam_fast.check.compare import compare_with_reference, failing_figures

    errors = compare_with_reference(got.to("cpu"), reference)
    failed = failing_figures(errors, LIMITS_OF[precision])
    failed += [k for k, v in errors.items() if not math.isfinite(v) and k not in failed]
    failed += [
        f"{name} not finite"
        for name, v in vars(got).items()
        if v is not None and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    return ("ok" if not failed else f"WRONG {failed}"), errors


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


def run_cuda_tests(out: Path, timeout_s: float, exports: Path) -> str:
    """pytest -m cuda on tests/test_cuda.py, its output in cuda_tests.log as it runs; a run past
    `timeout_s` is stopped and reported, not raised."""
    log = out / "cuda_tests.log"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q"]
    env = {**os.environ, EXPORTS_ENV: str(exports), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with log.open("w") as sink:
        try:
            code = subprocess.run(
                [*command, "-p", "no:cacheprovider"],
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=timeout_s,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    lines = log.read_text(errors="replace").strip().splitlines()
    words = ("passed", "failed", "skipped", "error")
    summary = next(
        (ln.strip("= ") for ln in reversed(lines) if " in " in ln and any(w in ln for w in words)),
        lines[-1] if lines else "(no output)",
    )
    seconds = time.perf_counter() - started
    if code is None:
        return f"TIMEOUT: stopped after {timeout_s:.0f} s (last line: {summary})"
    return f"{summary} ({seconds:.0f} s, exit {code})"


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


def _floor(net, precision: str, channels_last: bool = True, graphs: bool = False):
    """The plain forward of `net` (no Grad-CAM): run(images, targets) ignoring the targets."""
    half = precision == "float16"
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(net).to(dtype=torch.float16 if half else torch.float32, memory_format=fmt)

    def forward(x):
        with torch.inference_mode():
            if precision == "float32":
                return _no_tf32(lambda: net(x))
            return net(x)

    def prepare(images):
        return (images.half() if half else images).contiguous(memory_format=fmt)

    if not graphs:
        return lambda images, targets: forward(prepare(images))
    captured: dict[int, tuple] = {}

    def replay(images, targets):
        b = images.shape[0]
        if b not in captured:
            static = prepare(images).clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    forward(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = forward(static)
            captured[b] = (graph, static, out)
        graph, static, out = captured[b]
        static.copy_(prepare(images))
        graph.replay()
        return out

    return replay


def plan(
    model, exports: dict[str, Path | Exception], ort_cuda: bool, tensorrt: str | None, quick: bool
) -> list[Contender]:
    """Every contender, most important first (a spent budget skips the tail). `exports` maps a
    precision to its ONNX file or the error its export raised; `tensorrt` is None where
    ONNX Runtime's TensorRT provider loads, else why not."""
    from gradcam_fast import GradCAMSession, eager_gradcam

    def eager(precision):
        if precision == "float32":
            return lambda: lambda x, t: _no_tf32(lambda: eager_gradcam(model, x, t))
        if precision == "float16":
            return lambda: lambda x, t: _autocast(lambda: eager_gradcam(model, x, t))
        return lambda: lambda x, t: eager_gradcam(model, x, t)

    def torch_backend(precision, graphs):
        name = f"torch backend {SHORT[precision]}" + (" + CUDA graphs" if graphs else "")
        make = lambda: GradCAMSession.from_model(  # noqa: E731
            model, image_size=SIZE, device="cuda", precision=precision, cuda_graphs=graphs
        )
        return Contender(name, precision, make)

    def session(precision, **options):
        path = exports[precision]
        if isinstance(path, Exception):
            raise RuntimeError(f"the {precision} export failed: {path}")
        if not ort_cuda:
            raise RuntimeError(f"onnxruntime {ort.__version__} has no usable CUDA provider")
        return GradCAMSession(path, device="cuda", **options)

    def onnxruntime(precision, graphs, label="", **options):
        name = f"onnxruntime CUDA {SHORT[precision]}" + (" + CUDA graphs" if graphs else "") + label
        return Contender(name, precision, lambda: session(precision, cuda_graphs=graphs, **options))

    def floor(precision, label="", **kw):
        return Contender(FLOOR + label, precision, lambda: _floor(model, precision, **kw), True)

    both = (True,) if quick else (False, True)
    nhwc = {"cuda_options": {"prefer_nhwc": "1"}}
    contenders = [
        floor("float32"),
        floor("float16"),
        Contender(EAGER_FP32, "float32", eager("float32")),
        Contender("eager hook fp16 (autocast)", "float16", eager("float16")),
        torch_backend("float16", True),
        torch_backend("float32", True),
        *(onnxruntime(p, g) for p in ("float16", "float32") for g in both),
        *(() if quick else (torch_backend("float16", False), torch_backend("float32", False))),
        # levers on the floor: NHWC kernels, cuDNN's exhaustive search, graphs, channels-last
        onnxruntime("float16", True, " + prefer_nhwc", **nhwc),
        onnxruntime("float16", True, " + EXHAUSTIVE", cudnn_search="EXHAUSTIVE"),
        onnxruntime(
            "float16", True, " + prefer_nhwc + EXHAUSTIVE", cudnn_search="EXHAUSTIVE", **nhwc
        ),
        floor("float16", " + CUDA graphs", graphs=True),
        floor("float16", " NCHW", channels_last=False),
        floor("tf32"),
        Contender("eager hook (torch defaults: TF32 convs)", "tf32", eager("tf32")),
        torch_backend("tf32", True),
    ]
    for precision in ("float32", "float16"):
        if tensorrt is None:
            make = lambda p=precision: session(p, tensorrt=True)  # noqa: E731
        else:
            make = _skip(f"TensorRT does not load here: {tensorrt}")
        checked_as = "tf32" if precision == "float32" else precision  # TensorRT may use TF32
        contenders.append(Contender(f"onnxruntime TensorRT {SHORT[precision]}", checked_as, make))
    return contenders


class Skip(Exception):
    """A contender that cannot run here for a known reason (recorded as skipped, not failed)."""


def _skip(reason: str):
    def make():
        raise Skip(reason)

    return make


def measure_on_gpu(images, reference, quick: bool):
    """The real measurement: check at batch 8, then time at each batch size."""

    def measure(c: Contender) -> list[Row]:
        try:
            run = c.make()
        except Skip as why:
            return [Row(c.name, c.precision, b, None, f"skipped: {why}") for b in BATCHES]
        check = "-"
        if not c.floor:
            got = run(images[8], reference.target_classes)
            check, errors = verdict(got, reference, c.precision)
            print(
                f"{c.name}: check {check}, cams_lowres error {errors['cams_lowres']:.1e}",
                flush=True,
            )
        rows = []
        for b in BATCHES:
            t = torch.full((b, 1), -1, device="cuda")
            iters = (10 if c.name.startswith("eager") else 40) // (2 if quick else 1)
            times = cuda_time(lambda b=b, t=t: run(images[b], t), 3, iters)
            rows.append(Row(c.name, c.precision, b, statistics.median(times), check))
        print(f"{c.name}: ms by batch {[round(r.ms, 2) for r in rows]}", flush=True)
        torch.cuda.empty_cache()
        return rows

    return measure


def export_each(model, folder: Path, recorder: Recorder) -> dict[str, Path | Exception]:
    """float32 and float16 exports, each on its own; reused where a previous run left them
    (written under a temporary name, then renamed: a file there is whole)."""
    from gradcam_fast import export_onnx

    folder.mkdir(parents=True, exist_ok=True)
    exports: dict[str, Path | Exception] = {}
    for precision in ("float32", "float16"):
        path, started = folder / f"{precision}.onnx", time.perf_counter()
        try:
            if not path.is_file():
                tmp = folder / f"{precision}.part.onnx"
                export_onnx(model, tmp, image_size=SIZE, precision=precision, validate=False)
                os.replace(tmp, path)
                what = "exported"
            else:
                what = "reused"
            exports[precision] = path
        except Exception as exc:  # the other precision still runs
            exports[precision], what = exc, f"FAILED {type(exc).__name__}: {exc}"
        recorder.phase(f"export {precision}", time.perf_counter() - started, result=what)
    return exports


def header_info(tests: str) -> dict:
    try:
        driver = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=False,
            ).stdout.strip()
            or "?"
        )
    except (OSError, subprocess.SubprocessError):
        driver = "?"
    return {
        "device": torch.cuda.get_device_name(),
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "onnxruntime": f"{ort.__version__} ({', '.join(ort.get_available_providers())})",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "tests": tests,
    }


def dry_run(args) -> int:
    """Everything but the GPU: the real plan, fake timings, the same files. The float16 export
    is made to fail and TensorRT to be missing, as a real run records them."""
    header = {
        "device": "DRY RUN (fake timings)",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "tests": "skipped (dry run)",
    }
    recorder = Recorder(args.out, header)
    exports = {"float32": Path("float32.onnx"), "float16": RuntimeError("simulated failure")}
    missing = "simulated: libnvinfer.so.10: cannot open shared object file"
    contenders = plan(None, exports, ort_cuda=True, tensorrt=missing, quick=args.quick)

    def measure(c: Contender) -> list[Row]:
        try:
            if "TensorRT" in c.name or c.name.startswith("onnxruntime CUDA fp16"):
                c.make()  # TensorRT: Skip; float16 ONNX Runtime: the export's failure
        except Skip as why:
            return [Row(c.name, c.precision, b, None, f"skipped: {why}") for b in BATCHES]
        ms = 2.0 if c.name.startswith("eager") else 1.0
        return [
            Row(c.name, c.precision, b, ms * (1 + b / 8), "-" if c.floor else "ok") for b in BATCHES
        ]

    run_contenders(contenders, measure, recorder, args.budget_s)
    recorder.close()
    print(render_markdown(recorder.rows, header))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="start no contender after this many seconds from the start (default 300)",
    )
    parser.add_argument(
        "--tests-timeout-s",
        type=float,
        default=200.0,
        help="stop the CUDA tests after this long (default 200; less where the budget is short)",
    )
    parser.add_argument(
        "--exports",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gradcam_fast_gpu_check",
        help="folder of the VGG19 exports (reused when there)",
    )
    parser.add_argument("--quick", action="store_true", help="fewer variants and iterations")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument(
        "--dry-run", action="store_true", help="no GPU: fake timings, to check the files"
    )
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (try --dry-run)")
        return 1
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    from gradcam_fast import eager_gradcam, load_vgg
    from gradcam_fast.runtime.ort_backend import available_devices, provider_load_error

    recorder = Recorder(args.out, header_info("not run yet"), started)
    recorder.write_tables()
    t0 = time.perf_counter()
    model = load_vgg("vgg19", "random", seed=0)  # the tests' weights: their exports are these
    recorder.phase("load VGG19", time.perf_counter() - t0)
    exports = export_each(model, args.exports, recorder)
    if args.skip_tests:
        tests = "skipped"
    else:
        t0 = time.perf_counter()
        left = args.budget_s - (t0 - started) - 45  # keep time for the first contenders
        tests = run_cuda_tests(args.out, max(30.0, min(args.tests_timeout_s, left)), args.exports)
        recorder.phase("cuda tests", time.perf_counter() - t0, result=tests)
    recorder.header["tests"] = tests

    t0 = time.perf_counter()
    torch.backends.cudnn.benchmark = True  # every contender and the floor get autotuned convs
    gen = torch.Generator().manual_seed(0)
    images = {b: torch.randn(b, 3, SIZE, SIZE, generator=gen).cuda() for b in BATCHES}
    reference = eager_gradcam(model, images[8].cpu(), None)  # float32 on the CPU: the oracle
    model_cuda = copy.deepcopy(model).cuda()
    recorder.phase("reference and inputs", time.perf_counter() - t0)
    ort_cuda = "cuda" in available_devices()
    trt = provider_load_error("TensorrtExecutionProvider")
    contenders = plan(model_cuda, exports, ort_cuda, trt, args.quick)
    run_contenders(
        contenders, measure_on_gpu(images, reference, args.quick), recorder, args.budget_s
    )
    recorder.phase("total", time.perf_counter() - started)
    recorder.write_tables()
    recorder.close()
    print(render_markdown(recorder.rows, recorder.header))
    bad = [r for r in recorder.rows if r.check.startswith(("WRONG", "error"))]
    tests_ok = tests == "skipped" or tests.endswith("exit 0)")
    return 0 if not bad and tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
