"""What `backend="auto"` and `precision="auto"` pick on this CPU: a table keyed by CPU features.

Each row names the CPU features it needs (Linux /proc/cpuinfo flag names) and the (backend,
precision) pairs auto may pick, in order of preference; the first row whose flags the CPU has
decides. int8 needs
calibration photos (it is skipped without them) and is validated against float32 on them when
the int8 model is made (`int8_cache.py`). The rows were measured on VGG19; a session keeps a
lossy option only where it also holds the maps and pays on its own model on this CPU
(`speed_trial.py`, `backends.py`), else it takes the next.
Figures: speed-ups of VGG19 Grad-CAM (224, channel-weights model) over plain VGG19 float32 in
ONNX Runtime, batch 1 / batch 8; benchmarks/RESULTS.md has the runs.

| CPU features | auto picks, in order (int8 needs calibration) | exact float32 | measured |
| --- | --- | --- | --- |
| amx_bf16 + amx_int8 (Intel Xeon 4th gen+) | OpenVINO int8, OpenVINO bf16, ONNX Runtime int8 | ONNX Runtime | by the issue's author on a 2-core AMX Xeon, 2026-12-02: int8 5.8x / 11.4x, bf16 4.2x / 6.9x |
| avx512_bf16 + avx512_vnni, no AMX (AMD Zen 4) | ONNX Runtime int8, OpenVINO int8, OpenVINO bf16 | ONNX Runtime | here, 2-core AMD EPYC Zen 4, 2026-12-03 (quiet rerun): ORT int8 3.35x / 3.72x, OpenVINO int8 2.46x / 3.63x, bf16 1.78x / 2.00x |
| avx512_vnni or avx_vnni | ONNX Runtime int8 | ONNX Runtime | ONNX Runtime's QOperator int8 (issue 13); OpenVINO not measured on such a CPU |
| avx2, no VNNI (e.g. AMD Zen 3) | OpenVINO int8, ONNX Runtime int8 | ONNX Runtime | here, 2-core AVX2-only AMD EPYC, 2026-12-07: OpenVINO int8 1.87x / 2.00x (r 0.990, 16/16 top-1), ONNX Runtime int8 (7-bit kernels) 1.93x / 1.96x (r 0.985, 15/16; VGG19's validation refused it), OpenVINO float32 0.98x / 0.96x |
| anything else | (none) | ONNX Runtime | today's default |

Pure functions, no imports from the package: the CLI's parser and the session both use them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "BACKENDS",
    "FLAGS_ENV",
    "ROWS",
    "SESSION_PRECISIONS",
    "VNNI_FLAGS",
    "Choice",
    "Row",
    "candidates",
    "choose",
    "cpu_count",
    "cpu_flags",
    "cpu_model",
    "int8_pair_sums_saturate",
    "openvino_installed",
    "resolve",
]

BACKENDS = ("onnxruntime", "openvino", "auto")
FLAGS_ENV = "GRADCAM_FAST_CPU_FLAGS"
SESSION_PRECISIONS = ("float32", "bfloat16", "int8", "auto")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})  # exact int8 dot products
_X86 = {"x86_64", "amd64", "i386", "i686", "x86"}


class Row(NamedTuple):
    """One row of the table: the CPU flags it needs, the (backend, precision) pairs auto may
    pick in order of preference (int8 only with calibration photos), where the figures come
    from, and the backend of exact float32 on such a CPU."""

    name: str
    flags: frozenset[str]
    options: tuple[tuple[str, str], ...]
    source: str
    float32: str = "onnxruntime"


def _row(name: str, flags: str, options: str, source: str) -> Row:
    """A row from its flags ("a b") and options ("backend precision, backend precision")."""
    pairs = tuple(tuple(o.split()) for o in options.split(",") if o.strip())
    return Row(name, frozenset(flags.split()), pairs, source)


_AMX_RUN = (
    "measured on a 2-core AMX Xeon by the issue's author (issue 21, 2026-12-02): OpenVINO "
    "int8 5.8x/11.4x, bf16 4.2x/6.9x, ONNX Runtime int8 2.9x/3.2x over ONNX Runtime "
    "float32 at batch 1/8; OpenVINO float32 1.0x"
)
_ZEN4_RUN = (
    "measured on a 2-core AMD EPYC Zen 4 (no AMX; benchmarks/RESULTS.md, quiet rerun of "
    "2026-12-03): ONNX Runtime int8 3.35x/3.72x, OpenVINO int8 2.46x/3.63x, OpenVINO "
    "bf16 1.78x/2.00x over ONNX Runtime float32 at batch 1/8"
)
_AVX2_RUN = (
    "measured on a 2-core AVX2-only AMD EPYC (no AVX-512, VNNI or AMX; benchmarks/RESULTS.md, "
    "2026-12-07): OpenVINO int8 1.87x/2.00x with maps r 0.990, ONNX Runtime int8 (7-bit "
    "kernels there) 1.93x/1.96x with r 0.985, OpenVINO float32 0.98x/0.96x over ONNX Runtime "
    "float32 at batch 1/8"
)
_VNNI = "ONNX Runtime's int8 (VNNI dot products)"
_ORT_INT8, _OV_INT8, _OV_BF16 = "onnxruntime int8", "openvino int8", "openvino bfloat16"

ROWS = (
    _row("AMX", "amx_bf16 amx_int8", f"{_OV_INT8}, {_OV_BF16}, {_ORT_INT8}", _AMX_RUN),
    _row(
        "AVX512-BF16 + VNNI, no AMX",
        "avx512_bf16 avx512_vnni",
        f"{_ORT_INT8}, {_OV_INT8}, {_OV_BF16}",
        _ZEN4_RUN,
    ),
    _row("VNNI", "avx512_vnni", _ORT_INT8, f"{_VNNI}, issue 13; OpenVINO unmeasured on such CPUs"),
    _row("AVX-VNNI", "avx_vnni", _ORT_INT8, f"{_VNNI}; OpenVINO unmeasured on such CPUs"),
    _row("AVX2, no VNNI", "avx2", f"{_OV_INT8}, {_ORT_INT8}", _AVX2_RUN),
    _row("other", "", "", "today's default, exact float32"),
)


class Choice(NamedTuple):
    """What auto picked and why (one line, for the CLI to print)."""

    backend: str
    precision: str
    reason: str


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (/proc/cpuinfo on Linux; empty elsewhere: the last row).
    $GRADCAM_FAST_CPU_FLAGS, when set (space-separated, may be empty), replaces them: it pins
    what auto picks (the test suite sets it empty, so auto means exact ONNX Runtime float32
    whatever CPU runs the tests)."""
    if (pinned := os.environ.get(FLAGS_ENV)) is not None:
        return frozenset(pinned.split())
    if not sys.platform.startswith("linux"):
        return frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return frozenset()
    return frozenset(line.partition(":")[2].split())


def int8_pair_sums_saturate(flags: Iterable[str] | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 convolutions add pairs of products in saturating
    int16 on this CPU (an x86 CPU without VNNI: AVX2 alone, or AVX-512 without VNNI), so that
    int8 kernels must keep within 7 bits (`ort_quantize`). `flags` default to `cpu_flags()`."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    return platform.machine().lower() in _X86 and not flags & VNNI_FLAGS


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for results and messages."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        line = ""
    return line.partition(":")[2].strip() or "unknown CPU"


def cpu_count() -> int:
    """Cores this process may run on (respects affinity masks, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def openvino_installed() -> bool:
    """Whether the openvino package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def _row(flags: Iterable[str]) -> Row:
    have = frozenset(flags)
    return next(r for r in ROWS if r.flags <= have)


def choose(flags: Iterable[str], *, calibration: bool = False, openvino: bool = True) -> Choice:
    """backend="auto", precision="auto": the first row whose flags the CPU has, its first
    option that can run (int8 only with calibration photos, OpenVINO only where installed),
    else exact float32."""
    return resolve("auto", "auto", flags, calibration=calibration, openvino=openvino)


def resolve(backend: str, precision: str, flags: Iterable[str], **options: bool) -> Choice:
    """What a session tries first: the first of `candidates` (same arguments; `options` are
    its calibration= and openvino=). Given values are kept as they are."""
    return candidates(backend, precision, flags, **options)[0]


def candidates(
    backend: str,
    precision: str,
    flags: Iterable[str],
    *,
    calibration: bool = False,
    openvino: bool = True,
) -> list[Choice]:
    """What auto may run, best first: the row's options that fit what was given, then the
    row's float32 (the last resort, always there). A session takes the first whose int8 model
    holds the fidelity limits and pays on this CPU (`backends.open_runner`); given values give
    one candidate, kept as it is."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in SESSION_PRECISIONS:
        raise ValueError(f"precision must be one of {SESSION_PRECISIONS}, got {precision!r}")
    if backend != "auto" and precision != "auto":
        return [Choice(backend, precision, "as given")]
    row = _row(flags)
    found = [
        Choice(option_backend, option_precision, f"row {row.name!r}: {row.source}")
        for option_backend, option_precision in row.options
        if (calibration or option_precision != "int8")  # int8 needs calibration photos
        and (openvino or option_backend != "openvino")
        and backend in ("auto", option_backend)
        and precision in ("auto", option_precision)
    ]
    why = f"row {row.name!r}: {_why_float32(row, calibration)}"
    if backend != "auto":
        return [*found, Choice(backend, "float32", why)]
    float32 = row.float32 if openvino or row.float32 != "openvino" else "onnxruntime"
    wanted = "float32" if precision == "auto" else precision
    if wanted == "bfloat16":
        float32 = "openvino"  # the one backend with a bfloat16 path for a file
    elif wanted == "int8":
        float32 = "onnxruntime"  # no measured row here: today's int8
    last = Choice(float32, wanted, why)
    return found if any(c[:2] == last[:2] for c in found) else [*found, last]


def _why_float32(row: Row, calibration: bool) -> str:
    if not calibration and any(p == "int8" for _, p in row.options):
        return "exact float32 (int8 left out: no calibration photos)"
    return "exact float32"
