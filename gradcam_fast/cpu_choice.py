"""What `backend="auto"` and `precision="auto"` pick on this CPU: a table keyed by CPU features.

Each row names the CPU features it needs (Linux /proc/cpuinfo flag names), the backend, and the
precisions in order of preference; the first row whose flags the CPU has decides. int8 needs
calibration photos (it is skipped without them) and is validated against float32 on them when
the int8 model is made (`int8_cache.py`); bfloat16 is chosen only where it was measured to keep
the maps (correlation with float32's at least 0.99, top-1 kept) and to be faster.
Figures: speed-ups of VGG19 Grad-CAM (224, channel-weights model) over plain VGG19 float32 in
ONNX Runtime, batch 1 / batch 8; benchmarks/RESULTS.md has the runs.

| CPU features | backend | precision (int8 needs calibration) | measured |
| --- | --- | --- | --- |
| amx_bf16 + amx_int8 (Intel Xeon 4th gen+) | openvino | int8, else bfloat16 | by the issue's author on a 2-core AMX Xeon, 2026-12-02: int8 5.8x / 11.4x, bf16 4.2x / 6.9x |
| avx512_bf16 + avx512_vnni, no AMX (AMD Zen 4) | openvino | int8, else bfloat16 | here, AMD EPYC Zen 4: see ROWS and RESULTS.md |
| avx512_vnni or avx_vnni | onnxruntime | int8, else float32 | ONNX Runtime's QOperator int8 (issue 13); OpenVINO not measured on such a CPU |
| anything else | onnxruntime | float32 | today's default |

Pure functions, no imports from the package: the CLI's parser and the session both use them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from typing import NamedTuple

__all__ = [
    "BACKENDS",
    "FLAGS_ENV",
    "ROWS",
    "SESSION_PRECISIONS",
    "Choice",
    "Row",
    "choose",
    "cpu_flags",
    "cpu_model",
    "openvino_installed",
    "resolve",
]

BACKENDS = ("onnxruntime", "openvino", "auto")
FLAGS_ENV = "GRADCAM_FAST_CPU_FLAGS"
SESSION_PRECISIONS = ("float32", "bfloat16", "int8", "auto")


class Row(NamedTuple):
    """One row of the table: the CPU flags it needs, the backend, the precisions preferred."""

    name: str
    flags: frozenset[str]
    backend: str
    precisions: tuple[str, ...]
    source: str


ROWS = (
    Row(
        "AMX",
        frozenset({"amx_bf16", "amx_int8"}),
        "openvino",
        ("int8", "bfloat16"),
        "measured on a 2-core AMX Xeon by the issue's author (issue 21, 2026-12-02): OpenVINO "
        "int8 5.8x/11.4x, bf16 4.2x/6.9x over ONNX Runtime float32 at batch 1/8",
    ),
    Row(
        "AVX512-BF16 + VNNI, no AMX",
        frozenset({"avx512_bf16", "avx512_vnni"}),
        "openvino",
        ("int8", "bfloat16"),
        "measured on AMD EPYC Zen 4 (benchmarks/RESULTS.md, 2026-12-02): OpenVINO int8 and bf16 "
        "faster than ONNX Runtime float32 and int8",
    ),
    Row(
        "VNNI",
        frozenset({"avx512_vnni"}),
        "onnxruntime",
        ("int8",),
        "ONNX Runtime's int8 (VNNI dot products), issue 13; OpenVINO unmeasured on such CPUs",
    ),
    Row(
        "AVX-VNNI",
        frozenset({"avx_vnni"}),
        "onnxruntime",
        ("int8",),
        "ONNX Runtime's int8 (VNNI dot products); OpenVINO unmeasured on such CPUs",
    ),
    Row("other", frozenset(), "onnxruntime", (), "today's default, exact float32"),
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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), for results and messages."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("model name")), "")
    except OSError:
        line = ""
    return line.partition(":")[2].strip() or "unknown CPU"


def openvino_installed() -> bool:
    """Whether the openvino package can be imported (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def _row(flags: Iterable[str], backend: str | None) -> Row:
    have = frozenset(flags)
    return next(r for r in ROWS if r.flags <= have and backend in (None, r.backend))


def choose(flags: Iterable[str], *, calibration: bool = False, openvino: bool = True) -> Choice:
    """backend="auto", precision="auto": the first row whose flags the CPU has; int8 only with
    calibration photos; ONNX Runtime's rows when OpenVINO is not installed."""
    return resolve("auto", "auto", flags, calibration=calibration, openvino=openvino)


def resolve(
    backend: str,
    precision: str,
    flags: Iterable[str],
    *,
    calibration: bool = False,
    openvino: bool = True,
) -> Choice:
    """The backend and precision to run, either of them "auto" (resolved from the table) or
    given; explicit values are kept as they are."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if precision not in SESSION_PRECISIONS:
        raise ValueError(f"precision must be one of {SESSION_PRECISIONS}, got {precision!r}")
    flags = frozenset(flags)
    if backend == "auto":
        row = _row(flags, None)
        if row.backend == "openvino" and not openvino:
            row = _row(flags - {"amx_bf16", "avx512_bf16"}, "onnxruntime")
            note = " (OpenVINO not installed: the best ONNX Runtime row)"
        else:
            note = ""
        backend = row.backend
    else:
        row = next((r for r in ROWS if r.flags <= flags and r.backend == backend), None)
        note = ""
    if precision != "auto":
        why = f"{backend} {precision} as given"
        return Choice(
            backend, precision, why + (f"; backend from row {row.name!r}" if note else "")
        )
    for wanted in row.precisions if row is not None else ():
        if wanted == "int8" and not calibration:
            continue  # int8 needs calibration photos
        if backend == "onnxruntime" and wanted == "bfloat16":
            continue  # ONNX Runtime has no bfloat16 CPU path
        return Choice(backend, wanted, f"row {row.name!r}: {row.source}{note}")
    skipped = " (int8 left out: no calibration photos)" if row and "int8" in row.precisions else ""
    return Choice(backend, "float32", f"float32: exact{skipped}{note}")
