"""Run the benchmark suite and write its report: `python -m benchmarks.report [--profile full]`.

1. runs `pytest benchmarks --benchmark-only --benchmark-json=...` with the profile (every
   contender is checked against the eager reference before it is timed);
2. times the session, the floor and the eager hook in interleaved rounds for the ratios the
   targets name (benchmarks.interleaved: a slow spell of the machine hits both sides of a ratio);
3. runs each contender once more in a process of its own for its peak RSS (benchmarks.memory);
4. prints and writes a markdown report (tables by batch size, export and post-processing lines,
   memory, the issue's targets) and a JSON file with the figures and the machine.

With --results FILE the markdown replaces the part of FILE between the report markers (the rest,
e.g. the analysis in benchmarks/RESULTS.md, is kept).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "BEGIN",
    "END",
    "evaluate_targets",
    "machine_info",
    "main",
    "render_markdown",
    "splice",
    "summarize",
]

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- report:begin (written by python -m benchmarks.report; edit outside the markers) -->"
END = "<!-- report:end -->"
MEMORY_CONTENDERS = [
    "eager_hook",
    "eager_autograd",
    "pytorch_grad_cam",
    "captum",
    "torchcam",
    "gradcam_fast",
    "gradcam_fast_low_memory",
    "gradcam_fast_low_memory_external",
    "floor_ort",
    "torch_no_grad",
]


def machine_info(profile: str) -> dict[str, Any]:
    """CPU model, cores, threads, library versions, device and load: the report's header."""
    import onnxruntime as ort

    from gradcam_fast.runtime.session import cpu_count

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile,
        "cpu": cpu,
        "cores": cpu_count(),
        "torch_threads": cpu_count(),
        "ort_intra_op_threads": cpu_count(),
        "device": "cpu",
        "ort_providers": ort.get_available_providers(),
        "load_average": list(os.getloadavg()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            dist: version(dist)
            for dist in (
                "torch",
                "torchvision",
                "onnxruntime",
                "onnx",
                "numpy",
                "grad-cam",
                "captum",
                "torchcam",
            )
        },
    }


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    print("+", shlex.join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, text=True, capture_output=True, check=False)


def run_suite(profile: str, models: Path, json_path: Path, pytest_args: list[str]) -> None:
    """Run the pytest-benchmark suite; raise with its output when a test fails."""
    env = {**os.environ, "GRADCAM_BENCH_PROFILE": profile, "GRADCAM_BENCH_MODELS": str(models)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        f"--benchmark-json={json_path}",
        *pytest_args,
    ]
    done = _run(cmd, env)
    print(done.stdout[-4000:], done.stderr[-2000:], sep="\n")
    if done.returncode != 0:
        raise SystemExit(f"the benchmark suite failed (pytest exit {done.returncode}); see above")


def run_memory(profile: str, models: Path, batch: int) -> list[dict[str, Any]]:
    """One process per contender; a contender whose library is missing is left out."""
    rows = []
    for name in MEMORY_CONTENDERS:
        cmd = [sys.executable, "-m", "benchmarks.memory", name, "--models", str(models)]
        done = _run([*cmd, "--profile", profile, "--batch", str(batch)], dict(os.environ))
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"memory probe {name} failed: {last}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def run_interleaved(profile: str, models: Path) -> dict[str, Any]:
    """Interleaved-round ratios by batch size (str) and contender; {} when the step fails."""
    cmd = [sys.executable, "-m", "benchmarks.interleaved", "--models", str(models)]
    done = _run([*cmd, "--profile", profile], dict(os.environ))
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"interleaved rounds failed: {last}", file=sys.stderr)
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])["batches"]


def _stats(bench: dict[str, Any]) -> dict[str, Any]:
    s = bench["stats"]
    return {
        "name": bench["name"],
        "group": bench.get("group"),
        "median_ms": s["median"] * 1e3,
        "min_ms": s["min"] * 1e3,
        "max_ms": s["max"] * 1e3,
        "rounds": s["rounds"],
        **bench.get("extra_info", {}),
    }


def summarize(
    bench_json: dict[str, Any], interleaved: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Rows with ratios from pytest-benchmark's JSON: contender groups (speedup over the eager
    hook, ratio to the ORT floor, same batch), K groups, post-processing, export, the rest; and
    the interleaved rounds' figures (`benchmarks.interleaved`) when given."""
    rows = [_stats(b) for b in bench_json["benchmarks"]]
    contenders = [r for r in rows if "contender" in r and r["group"].startswith("batch ")]
    by_key = {(r["batch"], r["contender"]): r for r in contenders}
    for r in contenders:
        eager = by_key.get((r["batch"], "eager_hook"))
        floor = by_key.get((r["batch"], "floor_ort"))
        r["images_per_s"] = r["batch"] / (r["median_ms"] / 1e3)
        r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager else None
        r["ratio_to_floor"] = r["median_ms"] / floor["median_ms"] if floor else None
    k_rows = [r for r in rows if "contender" in r and r["group"].startswith("K, ")]
    k1 = {r["batch"]: r for r in k_rows if r["k"] == 1}
    for r in k_rows:
        r["ratio_to_k1"] = (
            r["median_ms"] / k1[r["batch"]]["median_ms"] if r["batch"] in k1 else None
        )
    stages = {r["stage"]: r for r in rows if "stage" in r}
    others = [r for r in rows if "contender" not in r and "stage" not in r]
    return {
        "contenders": contenders,
        "k": k_rows,
        "stages": stages,
        "others": others,
        "interleaved": interleaved or {},
    }


def evaluate_targets(
    summary: dict[str, Any], memory: list[dict[str, Any]], weights_mib: float
) -> list[dict[str, Any]]:
    """The issue's targets, each with its figure and whether it is met. The ratios to the floor
    and the speedups over the eager hook come from the interleaved rounds where they were run
    (marked so), else from the pytest-benchmark groups."""
    by_key = {(r["batch"], r["contender"]): r for r in summary["contenders"]}
    interleaved = summary.get("interleaved", {})
    batches = sorted({r["batch"] for r in summary["contenders"]})
    targets = []

    def add(target: str, figure: float | None, limit: float, higher_is_better: bool, fmt: str):
        if figure is None:
            return
        met = figure >= limit if higher_is_better else figure <= limit
        targets.append({"target": target, "figure": fmt.format(figure), "met": met})

    def pick(key: str, suite_row: dict, interleaved_row: dict) -> tuple[float, str]:
        """The interleaved figure where there is one (labelled so), else the suite's."""
        if interleaved_row.get(key) is not None:
            return interleaved_row[key], ", interleaved"
        return suite_row[key], ""

    for b in batches:
        fast = by_key.get((b, "gradcam_fast"))
        if not fast:
            continue
        rr = interleaved.get(str(b), {}).get("gradcam_fast", {})
        if b in (1, 8):
            speedup, how = pick("speedup_vs_eager", fast, rr)
            add(
                f"speedup over the eager hook, batch {b} (>= 4x){how}",
                speedup,
                4.0,
                True,
                "{:.2f}x",
            )
        ratio, how = pick("ratio_to_floor", fast, rr)
        add(f"ratio to the ORT floor, batch {b} (<= 1.05x){how}", ratio, 1.05, False, "{:.3f}x")
        rivals = [
            by_key[b, n]
            for n in ("eager_autograd", "pytorch_grad_cam", "captum", "torchcam")
            if (b, n) in by_key
        ]
        if rivals:
            best = min(rivals, key=lambda r: r["median_ms"])
            add(
                f"speedup over the fastest of 2 and 3 ({best['contender']}), batch {b} (>= 2x)",
                best["median_ms"] / fast["median_ms"],
                2.0,
                True,
                "{:.2f}x",
            )
    for r in summary["k"]:
        if r["k"] != 1 and r.get("ratio_to_k1") is not None:
            add(
                f"K={r['k']} / K=1, batch {r['batch']} (<= 1.10x)",
                r["ratio_to_k1"],
                1.10,
                False,
                "{:.3f}x",
            )
    post = summary["stages"].get("postprocess")
    fast = by_key.get((post["batch"], "gradcam_fast")) if post else None
    if post and fast:
        add(
            f"post-processing / session call, batch {post['batch']} (<= 2%)",
            100 * post["median_ms"] / fast["median_ms"],
            2.0,
            False,
            "{:.2f}%",
        )
    for m in memory:
        if m["contender"] == "gradcam_fast":
            add(
                f"peak RSS of a session process at batch {m['batch']} / weights (<= 1.3x)",
                m["peak_mib"] / weights_mib,
                1.3,
                False,
                "{:.2f}x",
            )
    return targets


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_markdown(
    summary: dict[str, Any],
    memory: list[dict[str, Any]],
    targets: list[dict[str, Any]],
    machine: dict[str, Any],
    weights_mib: float,
    command: str,
) -> str:
    """The report as markdown (ms per call; speedup = eager hook / contender; floor ratio =
    contender / ORT floor; both within the same batch size and run)."""
    out = [
        f"Command: `{command}`  ",
        f"Date: {machine['date_utc']}; load average at start (1, 5, 15 min): "
        + ", ".join(f"{x:.2f}" for x in machine["load_average"])
        + f"; profile `{machine['profile']}`; weights {weights_mib:.0f} MiB.",
        "",
    ]
    batches = sorted({r["batch"] for r in summary["contenders"]})
    for b in batches:
        out += [
            f"### Batch {b}",
            "",
            "| contender | median ms | spread ms (min-max) | rounds | images/s | speedup vs eager hook | ratio to floor | check (max error) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        rows = sorted(
            (r for r in summary["contenders"] if r["batch"] == b), key=lambda r: r["label"]
        )
        for r in rows:
            errors = ", ".join(f"{k} {v:.1e}" for k, v in r.get("errors", {}).items())
            out.append(
                f"| {r['label']} | {r['median_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | "
                f"{r['rounds']} | {r['images_per_s']:.2f} | {_fmt(r['speedup_vs_eager'], '.2f')}x | "
                f"{_fmt(r['ratio_to_floor'], '.3f')}x | {errors} |"
            )
        out.append("")
    if summary["k"]:
        out += [
            "### K target classes per image (gradcam_fast)",
            "",
            "| batch | K | median ms | spread ms (min-max) | ratio to K=1 |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in sorted(summary["k"], key=lambda r: (r["batch"], r["k"])):
            out.append(
                f"| {r['batch']} | {r['k']} | {r['median_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | "
                f"{_fmt(r['ratio_to_k1'], '.3f')}x |"
            )
        out.append("")
    if summary.get("interleaved"):
        out += [
            "### Interleaved rounds (each round: every contender once, shuffled, an untimed call then a timed one)",
            "",
            "Ratios are medians over rounds of the ratio within a round.",
            "",
            "| batch | contender | median ms | rounds | ratio to floor | speedup vs eager hook |",
            "| ---: | --- | ---: | ---: | ---: | ---: |",
        ]
        for b, rows in sorted(summary["interleaved"].items(), key=lambda kv: int(kv[0])):
            for name, r in rows.items():
                out.append(
                    f"| {b} | {name} | {r['median_ms']:.1f} | {r['rounds']} | "
                    f"{_fmt(r.get('ratio_to_floor'), '.3f')}x | "
                    f"{_fmt(r.get('speedup_vs_eager'), '.2f')}x |"
                )
        out.append("")
    out += ["### Export and post-processing", ""]
    export = summary["stages"].get("export")
    if export:
        out.append(
            f"- Export (trace + save, K=1): {export['median_ms'] / 1e3:.1f} s; validation against "
            f"the eager reference: {export['validate_s']:.1f} s; file {export['size_bytes'] / 2**20:.0f} MiB."
        )
    post = summary["stages"].get("postprocess")
    if post:
        fast = next(
            (
                r
                for r in summary["contenders"]
                if r["batch"] == post["batch"] and r["contender"] == "gradcam_fast"
            ),
            None,
        )
        share = (
            f" = {100 * post['median_ms'] / fast['median_ms']:.2f}% of the session call"
            if fast
            else ""
        )
        out.append(
            f"- Post-processing at batch {post['batch']} (weights, weighted sum, ReLU, upsample, "
            f"min-max): {post['median_ms']:.2f} ms median{share}."
        )
    out.append("")
    if memory:
        out += [
            f"### Peak memory (RSS, MiB), one process per contender, batch {memory[0]['batch']}",
            "",
            "| contender | after imports | after load | peak | peak / weights | peak - imports |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m in memory:
            out.append(
                f"| {m['contender']} | {m['imports_mib']:.0f} | {m['loaded_mib']:.0f} | {m['peak_mib']:.0f} | "
                f"{m['peak_mib'] / weights_mib:.2f}x | {m['peak_mib'] - m['imports_mib']:.0f} |"
            )
        out.append("")
    if targets:
        out += ["### Targets", "", "| target | figure | met |", "| --- | ---: | --- |"]
        out += [
            f"| {t['target']} | {t['figure']} | {'yes' if t['met'] else '**no**'} |"
            for t in targets
        ]
        out.append("")
    if summary["others"]:
        out += [
            "### Other benchmarks in the suite",
            "",
            "| group | benchmark | median ms | spread ms (min-max) | rounds |",
            "| --- | --- | ---: | ---: | ---: |",
        ]
        for r in summary["others"]:
            out.append(
                f"| {r['group']} | {r['name']} | {r['median_ms']:.1f} | {r['min_ms']:.1f}-{r['max_ms']:.1f} | {r['rounds']} |"
            )
        out.append("")
    out += ["### Machine", "", "```json", json.dumps(machine, indent=2), "```", ""]
    return "\n".join(out)


def splice(document: str, report: str) -> str:
    """`document` with the text between BEGIN and END replaced by `report` (appended when the
    markers are missing)."""
    block = f"{BEGIN}\n{report.rstrip()}\n{END}"
    if BEGIN in document and END in document:
        head, rest = document.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    return document.rstrip() + ("\n\n" if document.strip() else "") + block + "\n"


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
    parser.add_argument(
        "--no-interleaved", action="store_true", help="skip the interleaved-round ratios"
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)

    from benchmarks.config import get_profile

    profile = get_profile(args.profile)
    machine = machine_info(profile.name)
    command = shlex.join(
        ["python", "-m", "benchmarks.report", *(argv if argv is not None else sys.argv[1:])]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gradcam_bench_") as tmp:
        models = Path(tmp)
        json_path = args.from_json or args.out / f"pytest-benchmark-{profile.name}.json"
        if not args.from_json:
            run_suite(profile.name, models, json_path, args.pytest_args)
        interleaved = (
            {} if args.no_interleaved or args.from_json else run_interleaved(profile.name, models)
        )
        memory = (
            []
            if args.no_memory or args.from_json
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
    figures = {
        "machine": machine,
        "weights_mib": weights_mib,
        **summary,
        "memory": memory,
        "targets": targets,
    }
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
