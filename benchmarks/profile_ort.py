"""Where an ONNX model's time goes in ONNX Runtime, by operator type and by node:
`python -m benchmarks.profile_ort MODEL.onnx [--batch 1] [--runs 4] [--config KEY=VALUE ...]`.

Uses the session's CPU settings (gradcam_fast.runtime.ort_backend.session_options) plus
`enable_profiling`; `--config` adds session config entries (e.g. session.disable_prepacking=1)
to try a setting. Prints the RSS after loading and after the runs, then the summaries; compare a
gradcam_fast model with the floor (plain model) at the same batch.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["kernel_times", "main"]


def kernel_times(profile_json: Path) -> dict[tuple[str, str], float]:
    """Microseconds per (node name, op type) summed over the profile's kernel events."""
    totals: dict[tuple[str, str], float] = collections.defaultdict(float)
    for event in json.loads(profile_json.read_text()):
        name = event.get("name", "")
        if event.get("cat") == "Node" and name.endswith("_kernel_time"):
            op = event.get("args", {}).get("op_name", "?")
            totals[name.removesuffix("_kernel_time"), op] += event["dur"]
    return totals


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort

    from benchmarks.memory import current_rss_mib, peak_rss_mib
    from benchmarks.timing import time_calls
    from gradcam_fast.runtime.ort_backend import session_options

    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_ort", description=__doc__)
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--config", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--top", type=int, default=20, help="nodes to list")
    args = parser.parse_args(argv)

    options = session_options()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort_profile")
    for entry in args.config:
        key, _, value = entry.partition("=")
        options.add_session_config_entry(key, value)
    started = time.perf_counter()
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    print(f"load {time.perf_counter() - started:.1f} s, RSS {current_rss_mib():.0f} MiB")
    size = session.get_inputs()[0].shape[-1]
    gen = np.random.default_rng(0)
    feeds = {"images": gen.standard_normal((args.batch, 3, size, size), dtype=np.float32)}
    if len(session.get_inputs()) > 1:  # a gradcam_fast model: targets [B, K], top classes
        k = session.get_inputs()[1].shape[1]
        feeds["targets"] = np.tile(-np.arange(1, k + 1, dtype=np.int64), (args.batch, 1))
    session.run(None, feeds)  # warm-up (counted in the profile, divided out below)
    for seconds in time_calls(lambda: session.run(None, feeds), args.runs):
        print(f"run {1e3 * seconds:.1f} ms")
    print(f"RSS {current_rss_mib():.0f} MiB, peak {peak_rss_mib():.0f} MiB")
    totals = kernel_times(Path(session.end_profiling()))
    calls = args.runs + 1
    by_op: dict[str, float] = collections.defaultdict(float)
    for (_, op), us in totals.items():
        by_op[op] += us
    whole = sum(by_op.values()) or 1.0
    print("\nop type                       ms/run   share")
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"{op:28s} {us / 1e3 / calls:8.2f} {100 * us / whole:6.1f}%")
    print(f"\ntop {args.top} nodes                                       op            ms/run")
    for (node, op), us in sorted(totals.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{node[:50]:50s} {op:16s} {us / 1e3 / calls:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
