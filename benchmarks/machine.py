"""What machine a benchmark ran on: the CPU (model, cores, flags that matter to low precisions),
library versions, load average, and on a GPU the device, driver, CUDA and cuDNN."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from gradcam_fast.runtime.cpu_choice import ROWS, VNNI_FLAGS

__all__ = ["cpu", "gpu_info", "machine_info", "versions"]

LIBRARIES = ("torch", "torchvision", "onnxruntime", "onnx", "numpy", "grad-cam", "captum",
             "torchcam")  # fmt: skip


# the flags that pick a row of cpu_choice's table or its int8 rule (AMX, bf16, VNNI, AVX2),
# and AVX-512 itself
RELEVANT_FLAGS = frozenset().union(
    *(row.flags for row in ROWS), VNNI_FLAGS, {"amx_tile", "avx512f"}
)


def cpu() -> dict[str, Any]:
    """The CPU's architecture, model name and the flags of its bfloat16 and int8 instructions
    (`RELEVANT_FLAGS`)."""
    info: dict[str, Any] = {"machine": platform.machine(), "model": platform.processor()}
    try:
        lines: dict[str, str] = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                lines.setdefault(key.strip(), value.strip())
    except OSError:
        return info
    info["model"] = lines.get("model name", info["model"])
    flags = set(lines.get("flags", "").split())
    info["flags"] = sorted(flags & RELEVANT_FLAGS)
    return info


def versions(dists: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed version of each distribution, None where it is missing."""
    found: dict[str, str | None] = {}
    for dist in dists:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = None
    return found


def machine_info(profile: str) -> dict[str, Any]:
    """CPU model, cores, threads, library versions, device and load: the CPU report's header."""
    import onnxruntime as ort

    from gradcam_fast.runtime.session import cpu_count

    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile,
        "cpu": cpu()["model"] or "unknown",
        "cores": cpu_count(),
        "torch_threads": cpu_count(),
        "ort_intra_op_threads": cpu_count(),
        "device": "cpu",
        "ort_providers": ort.get_available_providers(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
    }


def gpu_info() -> dict[str, Any]:
    """The GPU, its driver, torch, CUDA, cuDNN and ONNX Runtime with its providers."""
    import onnxruntime as ort
    import torch

    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=20, check=False)
        driver = done.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        driver = "?"
    return {
        "device": torch.cuda.get_device_name(),
        "driver": driver,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "onnxruntime": f"{ort.__version__} ({', '.join(ort.get_available_providers())})",
    }
