"""Is a lossy precision worth it for this model on this CPU? Timed once, kept in the cache.

`precision="auto"` may pick int8 or OpenVINO's bfloat16 from the CPU's row (`cpu_choice`), but
the row was measured on VGG19: on small depthwise models the lower precision can cost more
than it saves (MobileNet-V3-L at batch 1 on a Zen 4: OpenVINO bf16 1.2x slower than ONNX
Runtime float32, int8 1.3x slower; benchmarks/RESULTS.md). So before auto keeps one, it is
timed against the float32 file in ONNX Runtime (what auto runs otherwise) at batch 1 and at
batch 8, interleaved, both sessions warm, and kept only where it `pays`: at least
`AUTO_MIN_SPEEDUP` times float32's speed at one of them and not slower at the other. The int8
model is timed when it is made (`int8_cache`); bfloat16, which has no file of its own, by
`bfloat16_trial`, which also judges its maps
against float32's (`compare.LIMITS["bfloat16"]`) and keeps the verdict in
`cache_dir()/trials/` (one JSON file per model file and CPU model).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from ..format.metadata import ModelMetadata
from .cachedir import cache_dir, file_key
from .cpu_choice import cpu_model

__all__ = [
    "AUTO_MIN_SPEEDUP",
    "MAX_ROUNDS",
    "SPEED_ROUNDS",
    "bfloat16_trial",
    "pays",
    "probe_images",
    "speeds_line",
    "speedup",
]

# auto keeps a lossy precision only where it was measured at least this much faster than
# float32 at one batch size (a margin over the noise of the few rounds timed), and not slower
# at the other
AUTO_MIN_SPEEDUP = 1.1
SPEED_ROUNDS = 3
MAX_ROUNDS = 15
ROUND_BUDGET_S = 1.0
PROBE_BATCH = 8


def speedup(reference: Callable, candidate: Callable, images: torch.Tensor) -> dict[str, Any]:
    """How much faster `candidate(images)` runs than `reference(images)`, at batch 1 and at
    the whole batch: the median over interleaved rounds of reference's time / candidate's, each
    call warmed once first. At least `SPEED_ROUNDS` rounds, more for fast models (up to
    `MAX_ROUNDS`, about `ROUND_BUDGET_S` of timing per batch size): a few milliseconds' calls
    are noisy. "speedup" is the smaller of the two batches'."""
    by_batch, rounds = {}, {}
    for batch in sorted({1, len(images)}):
        part = images[:batch]
        start = time.perf_counter()
        reference(part), candidate(part)  # warm: first-call allocations are not timed
        warm = time.perf_counter() - start
        rounds[batch] = min(MAX_ROUNDS, max(SPEED_ROUNDS, int(ROUND_BUDGET_S / max(warm, 1e-6))))
        ratios = []
        for _ in range(rounds[batch]):
            start = time.perf_counter()
            reference(part)
            middle = time.perf_counter()
            candidate(part)
            ratios.append((middle - start) / (time.perf_counter() - middle))
        by_batch[batch] = statistics.median(ratios)
    return {
        "speedup": min(by_batch.values()),
        "by_batch": by_batch,
        "rounds": rounds,
        "cpu": cpu_model(),
        "measured": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def pays(by_batch: dict) -> bool:
    """Whether speed-ups by batch size (`speedup`'s "by_batch") are worth a lossy precision:
    at least AUTO_MIN_SPEEDUP at one batch size and at least 1 (not slower) at every one."""
    speeds = list(by_batch.values())
    return min(speeds) >= 1.0 and max(speeds) >= AUTO_MIN_SPEEDUP


def speeds_line(by_batch: dict) -> str:
    """ "1.04x at batch 1, 1.75x at batch 8": speed-ups by batch size, for warnings."""
    return ", ".join(f"{v:.2f}x at batch {b}" for b, v in by_batch.items())


def probe_images(meta: ModelMetadata, calibration=None) -> torch.Tensor:
    """The images a trial runs: the calibration set's first `PROBE_BATCH` where one is given,
    else a seeded random batch in the model's input format (speed does not depend on the
    content; the maps' agreement on noise is the validation's worst case)."""
    raw = meta.input_format == "uint8_nhwc"
    if calibration is not None:
        from ..io.calibration import calibration_images

        images = calibration_images(calibration, meta.image_size, meta.mean, meta.std, raw)
        return images[:PROBE_BATCH]
    generator = torch.Generator().manual_seed(0)
    size = meta.image_size
    if raw:
        shape = (PROBE_BATCH, size, size, 3)
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.randn(PROBE_BATCH, 3, size, size, generator=generator)


def bfloat16_trial(
    path: str | os.PathLike,
    meta: ModelMetadata,
    open_session: Callable[..., Any],
    calibration=None,
) -> dict[str, Any]:
    """OpenVINO bfloat16 against ONNX Runtime float32 for the float32 file `path` on this CPU:
    {"speedup", "by_batch", "failed" (the figures beyond LIMITS["bfloat16"], empty if none),
    "errors", ...}; measured once per file and CPU model, then read from the cache.
    `open_session(path, backend=..., precision=...)` opens a CPU session."""
    from ..check.compare import compare_with_reference, failing_figures

    record_path = cache_dir() / "trials" / f"{Path(path).stem}-{file_key(path)}-bfloat16.json"
    if (record := _read(record_path)) is not None:
        return record
    record_path.parent.mkdir(parents=True, exist_ok=True)
    # one trial at a time: sessions opened side by side (actors, replicas) wait, then read it
    with FileLock(record_path.parent / ".trial.lock"):
        if (record := _read(record_path)) is not None:
            return record
        images = probe_images(meta, calibration)
        float32 = open_session(path, backend="onnxruntime", precision="float32")
        bf16 = open_session(path, backend="openvino", precision="bfloat16")
        ref = float32(images)
        errors = compare_with_reference(bf16(images, ref.target_classes), ref)
        record = {
            **speedup(float32, bf16, images),
            "failed": failing_figures(errors, "bfloat16"),
            "errors": {k: float(v) for k, v in errors.items()},
            "against": "the float32 file in ONNX Runtime, both warm",
            "images": "calibration photos" if calibration is not None else "seeded random batch",
        }
        staged = record_path.with_suffix(f".{os.getpid()}.tmp")
        staged.write_text(json.dumps(record, indent=1))
        os.replace(staged, record_path)
    return record


def _read(record_path: Path) -> dict[str, Any] | None:
    """A trial's record, where one was made on this CPU model (None otherwise)."""
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("cpu") == cpu_model() else None
