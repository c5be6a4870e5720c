"""Peak memory (RSS) of one contender, measured in a process of its own so contenders do not share
a peak: `python -m benchmarks.memory CONTENDER --models DIR [--profile full] [--batch 8]`.

Prints one JSON object: resident set after the imports, after loading (model or session), and
the peak after two calls at the batch size, in MiB (Linux `ru_maxrss`, `/proc/self/statm`).
Session-only contenders (gradcam_fast, the ORT floor) never build the torch model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
from pathlib import Path

__all__ = ["TORCH_FREE", "current_rss_mib", "main", "peak_rss_mib"]

# Contenders that run from their ONNX file alone (no torch model in the process).
TORCH_FREE = {"gradcam_fast", "gradcam_fast_low_memory", "gradcam_fast_low_memory_external",
              "gradcam_fast_k5", "floor_ort"}  # fmt: skip


def peak_rss_mib() -> float:
    """This process's peak resident set so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    """This process's resident set now, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(name: str, models: Path, profile_name: str, batch: int) -> dict[str, float | str]:
    """Import, load contender `name` from `models` (exports named as conftest names them), run it
    twice at `batch`, and return the RSS figures."""
    import torch

    from benchmarks.config import get_profile
    from benchmarks.contenders import Setup, make_model, open_contender, seeded_images
    from gradcam_fast.runtime.session import cpu_count

    torch.set_num_threads(cpu_count())
    profile = get_profile(profile_name)
    figures: dict[str, float | str] = {"contender": name, "batch": batch}
    figures["imports_mib"] = current_rss_mib()
    model = None if name in TORCH_FREE else make_model(profile.model)
    setup = Setup.from_folder(model, models, profile.image_size)
    contender = open_contender(name, setup)
    figures["loaded_mib"] = current_rss_mib()
    k = profile.num_targets if name.endswith(f"_k{profile.num_targets}") else 1
    images = seeded_images(batch, profile.image_size)
    classes = torch.arange(k).expand(batch, k).contiguous()
    for _ in range(2):
        contender.run(images, classes)
    figures["after_run_mib"] = current_rss_mib()
    figures["peak_mib"] = peak_rss_mib()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__)
    parser.add_argument("contender")
    parser.add_argument("--models", type=Path, required=True, help="folder of the run's exports")
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.contender, args.models, args.profile, args.batch)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
