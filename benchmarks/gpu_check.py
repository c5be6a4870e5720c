"""One command for a GPU machine (no network needed): CUDA tests, then Grad-CAM timings.

    python benchmarks/gpu_check.py [--out DIR] [--budget-s S] [--quick] [--skip-tests]
    python benchmarks/gpu_check.py --dry-run --out DIR      (no GPU: fake timings, same files)

1. exports VGG19 at 224 (seeded random weights) in float32 and float16, each on its own, into
   --exports (reused by a later run and by the tests);
2. runs the `cuda` tests (tests/test_cuda.py) on those exports, within --tests-timeout-s;
3. times the GPU contenders of `benchmarks.contenders` at batch 1, 8 and 64, most important
   first, each checked against the float32 eager reference (NaN or Inf fails) before it is
   timed; once --budget-s has passed since the start, the rest are recorded as skipped.

Written under --out as it goes: gpu_check.jsonl (a line per row and per phase), gpu_check.md (the
table in the layout of gpu_results_h100.md) and gpu_check.json, both rewritten after every
contender, and cuda_tests.log. A crash in one contender is recorded in its rows and the run goes on.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
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

import torch  # noqa: E402

from benchmarks.checks import check_output  # noqa: E402
from benchmarks.contenders import (  # noqa: E402
    EAGER_FP32,
    ContenderSpec,
    ContenderUnavailable,
    Setup,
    gpu_plan,
)
from benchmarks.contenders import GPU_FLOOR as FLOOR  # noqa: E402
from benchmarks.machine import gpu_info  # noqa: E402
from benchmarks.tables import markdown_table  # noqa: E402
from benchmarks.timing import median_s  # noqa: E402

BATCHES = (1, 8, 64)
SIZE = 224
LIMITS_OF = {"float32": "float32", "tf32": "float16", "float16": "float16"}  # tf32: 10-bit mantissa
EXPORTS_ENV = "GRADCAM_FAST_CUDA_EXPORTS"  # tests/test_cuda.py reads the exports from there
COLUMNS = "contender | precision | batch | median ms | images/s | vs eager fp32 | vs floor | check"
TABLE_HEAD = "\n".join(markdown_table(COLUMNS, "llrrrrrl", "", []))


@dataclass
class Row:
    """One contender at one batch size; `ms` is None where nothing was timed."""

    contender: str
    precision: str
    batch: int
    ms: float | None
    check: str  # "ok", "-" (a floor: nothing to check), "WRONG ...", "error: ...", "skipped: ..."


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


def _rows_of(c: ContenderSpec, check: str) -> list[Row]:
    """`c`'s untimed rows, one per batch size, with `check` saying why."""
    return [Row(c.name, c.precision, b, None, check) for b in BATCHES]


def render_markdown(rows: list[Row], header: dict) -> str:
    """The table of gpu_results_h100.md: ratios against the eager hook in float32 and against the
    floor of the same precision and batch, both from the same run."""
    eager = {r.batch: r.ms for r in rows if r.contender == EAGER_FP32 and r.ms}
    floor = {(r.batch, r.precision): r.ms for r in rows if r.contender == FLOOR and r.ms}
    cells = []
    for r in rows:
        timed = r.ms is not None and math.isfinite(r.ms) and r.ms > 0
        base = floor.get((r.batch, r.precision))
        cells.append((
            r,
            f"{r.ms:.2f}" if timed else "-",
            f"{r.batch * 1000 / r.ms:,.0f}" if timed else "-",
            f"{eager[r.batch] / r.ms:.2f}x" if timed and r.batch in eager else "-",
            f"{r.ms / base:.2f}" if timed and base else "-",
            r.check.replace("|", "/").replace("\n", " "),
        ))  # fmt: skip
    row = "{0.contender} | {0.precision} | {0.batch} | {1} | {2} | {3} | {4} | {5}"
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
        *markdown_table(COLUMNS, "llrrrrrl", row, cells),
    ]
    return "\n".join(lines) + "\n"


def run_contenders(
    contenders: list[ContenderSpec],
    measure: Callable[[ContenderSpec], list[Row]],
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
            recorder.add(_rows_of(c, f"skipped: budget of {budget_s:.0f} s spent"))
            continue
        try:
            rows = measure(c)
        except Exception as exc:  # report and go on: one broken path must not hide the rest
            text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else repr(exc)
            print(f"{c.name}: FAILED {text}", flush=True)
            rows = _rows_of(c, f"error: {text[:160]}")
        recorder.add(rows)
        recorder.phase(c.name, now() - started)


def verdict(got, reference, precision: str) -> tuple[str, dict]:
    """ "ok", or "WRONG" and why (`benchmarks.checks.check_output`, at the limits of the
    precision's class), with the judged figures."""
    try:
        return "ok", check_output("", got.to("cpu"), reference, LIMITS_OF[precision])
    except AssertionError as exc:
        return f"WRONG {str(exc).removeprefix(': ')[:300]}", {}


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
                [*command, "-p", "no:cacheprovider"], cwd=ROOT, stdout=sink,
                stderr=subprocess.STDOUT, env=env, timeout=timeout_s, check=False,
            ).returncode  # fmt: skip
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


def measure_on_gpu(setup: Setup, images, reference, quick: bool):
    """The real measurement: check at batch 8, then time at each batch size."""

    def measure(c: ContenderSpec) -> list[Row]:
        try:
            contender = c.factory(setup)
        except ContenderUnavailable as why:
            return _rows_of(c, f"skipped: {why}")
        run, check = contender.run, "-"
        if not c.floor:
            got = contender.output(run(images[8], reference.target_classes))
            check, errors = verdict(got, reference, c.precision)
            print(f"{c.name}: check {check}, errors {errors}", flush=True)
        rows = []
        for b in BATCHES:
            t = torch.full((b, 1), -1, device="cuda")
            iters = (10 if c.name.startswith("eager") else 40) // (2 if quick else 1)
            ms = 1e3 * median_s(lambda b=b, t=t: run(images[b], t), iters, 3, cuda=True)
            rows.append(Row(c.name, c.precision, b, ms, check))
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


def header_info(tests: str, device: dict | None = None) -> dict:
    """The table's header: the GPU (`machine.gpu_info`) unless `device` is given, date, command."""
    return {
        **(gpu_info() if device is None else device),
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "tests": tests,
    }


def dry_run(args) -> int:
    """Everything but the GPU: the real plan, fake timings, the same files. The float16 export
    is made to fail and TensorRT to be missing, as a real run records them."""
    dry = {"device": "DRY RUN (fake timings)", "torch": torch.__version__}
    header = header_info("skipped (dry run)", dry)
    recorder = Recorder(args.out, header)
    exports = {"float32": Path("float32.onnx"), "float16": RuntimeError("simulated failure")}
    missing = {"tensorrt": "simulated: libnvinfer.so.10: cannot open shared object file"}
    setup = Setup(None, "", SIZE, exports, "cuda", missing)

    def measure(c: ContenderSpec) -> list[Row]:
        try:
            if "TensorRT" in c.name or c.name.startswith("onnxruntime CUDA fp16"):
                c.factory(setup)  # TensorRT: skipped; float16 ONNX Runtime: the export's failure
        except ContenderUnavailable as why:
            return _rows_of(c, f"skipped: {why}")
        ms, check = 2.0 if c.name.startswith("eager") else 1.0, "-" if c.floor else "ok"
        return [Row(c.name, c.precision, b, ms * (1 + b / 8), check) for b in BATCHES]

    run_contenders(gpu_plan(args.quick), measure, recorder, args.budget_s)
    recorder.close()
    print(render_markdown(recorder.rows, header))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    add = parser.add_argument
    # fmt: off
    add("--budget-s", type=float, default=300.0,
        help="start no contender after this many seconds from the start (default 300)")
    add("--tests-timeout-s", type=float, default=200.0,
        help="stop the CUDA tests after this long (default 200; less where the budget is short)")
    add("--exports", type=Path, default=Path(tempfile.gettempdir()) / "gradcam_fast_gpu_check",
        help="folder of the VGG19 exports (reused when there)")
    # fmt: on
    add("--quick", action="store_true", help="fewer variants and iterations")
    add("--skip-tests", action="store_true")
    add("--dry-run", action="store_true", help="no GPU: fake timings, to check the files")
    args = parser.parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (try --dry-run)")
        return 1
    warnings.simplefilter("ignore")
    started = time.perf_counter()
    import onnxruntime as ort

    from gradcam_fast import eager_gradcam, load_vgg
    from gradcam_fast.model.loading import default_target_layer
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
    reference = eager_gradcam(model, images[8].cpu(), None)  # the eager reference: float32, CPU
    model_cuda = copy.deepcopy(model).cuda()
    recorder.phase("reference and inputs", time.perf_counter() - t0)
    unavailable = {"tensorrt": provider_load_error("TensorrtExecutionProvider")}
    if "cuda" not in available_devices():
        unavailable["cuda"] = f"onnxruntime {ort.__version__} has no usable CUDA provider"
    unavailable = {k: why for k, why in unavailable.items() if why is not None}
    layer = default_target_layer(model_cuda)
    setup = Setup(model_cuda, layer, SIZE, exports, "cuda", unavailable)
    measure = measure_on_gpu(setup, images, reference, args.quick)
    run_contenders(gpu_plan(args.quick), measure, recorder, args.budget_s)
    recorder.phase("total", time.perf_counter() - started)
    recorder.write_tables()
    recorder.close()
    print(render_markdown(recorder.rows, recorder.header))
    bad = [r for r in recorder.rows if r.check.startswith(("WRONG", "error"))]
    tests_ok = tests == "skipped" or tests.endswith("exit 0)")
    return 0 if not bad and tests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
