"""The CPU report's figures and text: ratios from pytest-benchmark's JSON and the interleaved
rounds, the issue's targets, the markdown, and its place in RESULTS.md between the markers.
`benchmarks/report.py` runs the measurements and calls these."""

from __future__ import annotations

import json
from typing import Any

from benchmarks.contenders import PEERS
from benchmarks.tables import section

__all__ = ["BEGIN", "END", "evaluate_targets", "render_markdown", "splice", "summarize"]

BEGIN = "<!-- report:begin (written by python -m benchmarks.report; edit outside the markers) -->"
END = "<!-- report:end -->"


def _stats(bench: dict[str, Any]) -> dict[str, Any]:
    s = bench["stats"]
    ms = {f"{k}_ms": s[k] * 1e3 for k in ("median", "min", "max")}
    row = {"name": bench["name"], "group": bench.get("group"), **ms, "rounds": s["rounds"]}
    return {**row, **bench.get("extra_info", {})}


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
            what = f"speedup over the eager hook, batch {b} (>= 4x){how}"
            add(what, speedup, 4.0, True, "{:.2f}x")
        ratio, how = pick("ratio_to_floor", fast, rr)
        add(f"ratio to the ORT floor, batch {b} (<= 1.05x){how}", ratio, 1.05, False, "{:.3f}x")
        rivals = [by_key[b, n] for n in PEERS if (b, n) in by_key]
        if rivals:
            best = min(rivals, key=lambda r: r["median_ms"])
            what = f"speedup over the fastest of 2 and 3 ({best['contender']}), batch {b} (>= 2x)"
            add(what, best["median_ms"] / fast["median_ms"], 2.0, True, "{:.2f}x")
    for r in summary["k"]:
        if r["k"] != 1 and r.get("ratio_to_k1") is not None:
            what = f"K={r['k']} / K=1, batch {r['batch']} (<= 1.10x)"
            add(what, r["ratio_to_k1"], 1.10, False, "{:.3f}x")
    post = summary["stages"].get("postprocess")
    fast = by_key.get((post["batch"], "gradcam_fast")) if post else None
    if post and fast:
        what = f"post-processing / session call, batch {post['batch']} (<= 2%)"
        add(what, 100 * post["median_ms"] / fast["median_ms"], 2.0, False, "{:.2f}%")
    for m in memory:
        if m["contender"] == "gradcam_fast":
            what = f"peak RSS of a session process at batch {m['batch']} / weights (<= 1.3x)"
            add(what, m["peak_mib"] / weights_mib, 1.3, False, "{:.2f}x")
    return targets


def _fmt(value: float | None, spec: str) -> str:
    return ("-" if value is None else format(value, spec)) + "x"  # "-x" where not measured


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
    load = ", ".join(f"{x:.2f}" for x in machine["load_average"])
    out = [
        f"Command: `{command}`  ",
        f"Date: {machine['date_utc']}; load average at start (1, 5, 15 min): {load}; profile "
        f"`{machine['profile']}`; weights {weights_mib:.0f} MiB.",
        "",
    ]
    spread = "{median_ms:.1f} | {min_ms:.1f}-{max_ms:.1f}"
    for b in sorted({r["batch"] for r in summary["contenders"]}):
        rows = [
            {
                **r,
                "check": ", ".join(f"{k} {v:.1e}" for k, v in r.get("errors", {}).items()),
                "speedup": _fmt(r["speedup_vs_eager"], ".2f"),
                "floor": _fmt(r["ratio_to_floor"], ".3f"),
            }
            for r in sorted(summary["contenders"], key=lambda r: r["label"])
            if r["batch"] == b
        ]
        header = "contender | median ms | spread ms (min-max) | rounds | images/s | speedup vs "
        header += "eager hook | ratio to floor | check (max error)"
        row = (
            "{label} | "
            + spread
            + " | {rounds} | {images_per_s:.2f} | {speedup} | {floor} | {check}"
        )
        out += section(f"Batch {b}", header, "lrrrrrrl", row, rows)
    if summary["k"]:
        rows = sorted(summary["k"], key=lambda r: (r["batch"], r["k"]))
        rows = [{**r, "to_k1": _fmt(r["ratio_to_k1"], ".3f")} for r in rows]
        header = "batch | K | median ms | spread ms (min-max) | ratio to K=1"
        row = "{batch} | {k} | " + spread + " | {to_k1}"
        out += section("K target classes per image (gradcam_fast)", header, "rrrrr", row, rows)
    if summary.get("interleaved"):
        rows = [
            {"batch": b, "name": name, **r, "floor": _fmt(r.get("ratio_to_floor"), ".3f"),
             "speedup": _fmt(r.get("speedup_vs_eager"), ".2f")}
            for b, by_name in sorted(summary["interleaved"].items(), key=lambda kv: int(kv[0]))
            for name, r in by_name.items()
        ]  # fmt: skip
        header = "batch | contender | median ms | rounds | ratio to floor | speedup vs eager hook"
        row = "{batch} | {name} | {median_ms:.1f} | {rounds} | {floor} | {speedup}"
        title = "Interleaved rounds (each round: every contender once, shuffled, an untimed call "
        title += "then a timed one)"
        note = "Ratios are medians over rounds of the ratio within a round."
        out += section(title, header, "rlrrrr", row, rows, note)
    out += ["### Export and post-processing", ""]
    export = summary["stages"].get("export")
    if export:
        out.append(
            f"- Export (trace + save, K=1): {export['median_ms'] / 1e3:.1f} s; validation against "
            f"the eager reference: {export['validate_s']:.1f} s; file {export['size_bytes'] / 2**20:.0f} MiB."
        )
    post = summary["stages"].get("postprocess")
    if post:
        by_key = {(r["batch"], r["contender"]): r for r in summary["contenders"]}
        fast = by_key.get((post["batch"], "gradcam_fast"))
        share = (
            fast and f" = {100 * post['median_ms'] / fast['median_ms']:.2f}% of the session call"
        )
        out.append(
            f"- Post-processing at batch {post['batch']} (weights, weighted sum, ReLU, upsample, "
            f"min-max): {post['median_ms']:.2f} ms median{share or ''}."
        )
    out.append("")
    if memory:
        rows = [
            {**m, "ratio": m["peak_mib"] / weights_mib, "own": m["peak_mib"] - m["imports_mib"]}
            for m in memory
        ]
        title = f"Peak memory (RSS, MiB), one process per contender, batch {memory[0]['batch']}"
        header = "contender | after imports | after load | peak | peak / weights | peak - imports"
        row = "{contender} | {imports_mib:.0f} | {loaded_mib:.0f} | {peak_mib:.0f} | {ratio:.2f}x | {own:.0f}"
        out += section(title, header, "lrrrrr", row, rows)
    if targets:
        rows = [{**t, "met": "yes" if t["met"] else "**no**"} for t in targets]
        out += section(
            "Targets", "target | figure | met", "lrl", "{target} | {figure} | {met}", rows
        )
    if summary["others"]:
        header = "group | benchmark | median ms | spread ms (min-max) | rounds"
        row = "{group} | {name} | " + spread + " | {rounds}"
        out += section("Other benchmarks in the suite", header, "llrrr", row, summary["others"])
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
