"""Run the benchmark suite and write its report: `python -m benchmarks.report [--profile full]`.

1. runs `pytest benchmarks --benchmark-only` with the profile (every contender checked first);
2. times the session, the floor and the eager hook in interleaved rounds (benchmarks.interleaved);
3. runs each contender once more in a process of its own for its peak RSS (benchmarks.memory);
4. prints and writes a markdown report (benchmarks.report_summary) and a JSON file of the figures.

With --results FILE the markdown replaces the part of FILE between the report markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.contenders import PEERS
from benchmarks.machine import machine_info
from benchmarks.report_summary import evaluate_targets, render_markdown, splice, summarize

__all__ = ["last_json_line", "main"]

ROOT = Path(__file__).resolve().parent.parent
MEMORY_CONTENDERS = ["eager_hook", *PEERS, "gradcam_fast", "gradcam_fast_low_memory",
                     "gradcam_fast_low_memory_external", "floor_ort", "torch_no_grad"]  # fmt: skip


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, check=False)


def run_suite(profile: str, models: Path, json_path: Path, pytest_args: list[str]) -> None:
    """Run the pytest-benchmark suite; raise with its output when a test fails."""
    env = {**os.environ, "GRADCAM_BENCH_PROFILE": profile, "GRADCAM_BENCH_MODELS": str(models)}
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-q", "-p", "no:cacheprovider"]
    done = _run([*cmd, "--benchmark-only", f"--benchmark-json={json_path}", *pytest_args], env)
    print(done.stdout[-4000:], done.stderr[-2000:], sep="\n")
    if done.returncode != 0:
        raise SystemExit(f"the benchmark suite failed (pytest exit {done.returncode}); see above")


def last_json_line(what: str, module: str, *args: str) -> dict[str, Any] | None:
    """The last stdout line of `python -m module args` as JSON; None (said on stderr) when the
    process fails."""
    done = _run([sys.executable, "-m", module, *args], dict(os.environ))
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"{what} failed: {last}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_memory(profile: str, models: Path, batch: int) -> list[dict[str, Any]]:
    """One process per contender; a contender whose library is missing is left out."""
    options = ("--models", str(models), "--profile", profile, "--batch", str(batch))
    rows = (
        last_json_line(f"memory probe {n}", "benchmarks.memory", n, *options)
        for n in MEMORY_CONTENDERS
    )
    return [row for row in rows if row is not None]


def run_interleaved(profile: str, models: Path) -> dict[str, Any]:
    """Interleaved-round ratios by batch size (str) and contender; {} when the step fails."""
    options = ("--models", str(models), "--profile", profile)
    figures = last_json_line("interleaved rounds", "benchmarks.interleaved", *options)
    return figures["batches"] if figures else {}


def _weights_mib(profile: str) -> float:
    from benchmarks.config import get_profile
    from benchmarks.contenders import make_model, weights_bytes

    return weights_bytes(make_model(get_profile(profile).model)) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--profile", default="full", help="'full' (VGG19 at 224) or 'tiny'")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--results", type=Path, help="markdown file to update between the markers")
    parser.add_argument("--from-json", type=Path, help="render a saved pytest-benchmark JSON")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak RSS processes")
    parser.add_argument("--no-interleaved", action="store_true", help="skip the interleaved ratios")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)

    from benchmarks.config import get_profile

    profile = get_profile(args.profile)
    machine = machine_info(profile.name)
    given = sys.argv[1:] if argv is None else argv
    command = shlex.join(["python", "-m", "benchmarks.report", *given])
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gradcam_bench_") as tmp:
        models = Path(tmp)
        json_path = args.from_json or args.out / f"pytest-benchmark-{profile.name}.json"
        if not args.from_json:
            run_suite(profile.name, models, json_path, args.pytest_args)
        saved = args.from_json
        interleaved = {} if args.no_interleaved or saved else run_interleaved(profile.name, models)
        memory = (
            []
            if args.no_memory or saved
            else run_memory(profile.name, models, profile.memory_batch)
        )
    bench_json = json.loads(json_path.read_text())
    weights_mib = _weights_mib(profile.name)
    summary = summarize(bench_json, interleaved)
    targets = evaluate_targets(summary, memory, weights_mib)
    machine["load_average_end"] = list(os.getloadavg())
    report = render_markdown(summary, memory, targets, machine, weights_mib, command)
    print(report)
    (args.out / f"report-{profile.name}.md").write_text(report)
    figures = {"machine": machine, "weights_mib": weights_mib, **summary, "memory": memory}
    figures["targets"] = targets
    (args.out / f"report-{profile.name}.json").write_text(
        json.dumps(figures, indent=2, default=str)
    )
    if args.results:
        existing = args.results.read_text() if args.results.exists() else ""
        args.results.write_text(splice(existing, report))
        print(f"updated {args.results}")
    missed = [t["target"] for t in targets if not t["met"]]
    if missed:
        print(f"{len(missed)} target(s) missed: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
