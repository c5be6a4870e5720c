"""The audit report: DIR/index.html (per-class table worst first, the worst images of each
class as overlays with the annotated boxes drawn, SVG plots of the mean deletion and insertion
curves and of the per-class scores) and DIR/summary.json. Every file is written atomically.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw

from ..io.colormaps import overlay
from ..io.files import atomic_file
from ..io.gallery import write_index
from .plots import bars_svg, curves_svg
from .summary import SCORES, rank_value

__all__ = ["draw_overlay", "worst_rows", "write_report", "write_summary"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:.25em .5em}
th{background:#eee}td.n{text-align:right}.grid{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.4em;width:240px}
figure img{max-width:232px;height:auto;display:block}figcaption{font-size:.75em}
.error{color:#a00}.plots{display:flex;flex-wrap:wrap;gap:1em}
"""
COLUMNS = ("pointing", "energy", "localization", "deletion", "insertion", "drop", "road")


def worst_rows(rows: Sequence[dict], per_class: int = 3) -> list[dict]:
    """The `per_class` lowest-ranked rows (`summary.rank_value`) of each class."""
    by_class: dict[int, list[dict]] = {}
    for r in rows:
        if "error" not in r and rank_value(r) is not None:
            by_class.setdefault(r["class"], []).append(r)
    out = []
    for members in by_class.values():
        out += sorted(members, key=rank_value)[:per_class]
    return out


def draw_overlay(
    original: np.ndarray, cam: np.ndarray, boxes: Sequence[Sequence[float]], map_box=None
) -> np.ndarray:
    """The map on the original image with the annotated boxes (green) and the map's box (white)
    drawn; `cam` [H, W] on the original's pixels (NaN where the model saw nothing)."""
    picture = Image.fromarray(overlay(original, cam))
    draw = ImageDraw.Draw(picture)
    width = max(2, round(max(original.shape[:2]) / 150))
    for b in boxes:
        draw.rectangle([b[0], b[1], b[2] - 1, b[3] - 1], outline=(0, 255, 0), width=width)
    if map_box is not None:
        draw.rectangle(
            [map_box[0], map_box[1], map_box[2] - 1, map_box[3] - 1],
            outline=(255, 255, 255),
            width=1,
        )
    return np.asarray(picture)


def write_summary(out: Path, summary: dict) -> Path:
    path = out / "summary.json"
    with atomic_file(path, "w") as f:
        json.dump(summary, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return path


def _fmt(metric: dict | None) -> str:
    if not metric or metric["mean"] is None:
        return "<td class='n'>-</td>"
    return (
        f"<td class='n' title='95% CI {metric['low']:.3f}..{metric['high']:.3f}, n={metric['n']}'>"
        f"{metric['mean']:.3f}</td>"
    )


def _mean_curve(rows: Sequence[dict], key: str) -> list[float] | None:
    curves = [r[key] for r in rows if r.get(key)]
    if not curves or len({len(c) for c in curves}) != 1:
        return None
    return np.mean(np.asarray(curves, dtype=np.float64), axis=0).tolist()


def _plots(rows: Sequence[dict], summary: dict) -> str:
    svgs = []
    dele, ins = _mean_curve(rows, "deletion_curve"), _mean_curve(rows, "insertion_curve")
    series = []
    for label, curve in (("deletion", dele), ("insertion", ins)):
        if curve is not None:
            xs = np.linspace(0.0, 1.0, len(curve)).tolist()
            series.append((label, xs, curve))
    if series:
        svgs.append(curves_svg(series, "mean probability vs fraction of pixels changed"))
    classes = summary["classes"][:40]
    for key in ("energy", "pointing", "insertion"):
        items = [
            (c["name"] or str(c["class"]), c["metrics"][key]["mean"])
            for c in classes
            if key in c["metrics"]
        ]
        if items:
            svgs.append(bars_svg(items, f"{key} per class (worst first)"))
    return f"<div class='plots'>{''.join(svgs)}</div>"


def write_report(
    out: Path, rows: Sequence[dict], summary: dict, title: str, pictures: dict[tuple, str]
) -> Path:
    """index.html in `out`; `pictures` maps (path, class) to an overlay file in `out`."""
    e = html.escape
    head = "".join(f"<th>{c}</th>" for c in ("class", "rows", *COLUMNS))
    body = []
    for c in summary["classes"]:
        label = f"{c['name']} ({c['class']})" if c["name"] else str(c["class"])
        cells = "".join(_fmt(c["metrics"].get(k)) for k in COLUMNS)
        body.append(f"<tr><td>{e(label)}</td><td class='n'>{c['rows']}</td>{cells}</tr>")
    overall = "".join(_fmt(summary["overall"].get(k)) for k in COLUMNS)
    figures = []
    for (path, cls), file in pictures.items():
        row = next((r for r in rows if r.get("path") == path and r.get("class") == cls), {})
        facts = ", ".join(f"{k} {row[k]:.3f}" for k in COLUMNS if row.get(k) is not None)
        name = row.get("name") or str(cls)
        figures.append(
            f"<figure><a href='{quote(file)}'><img src='{quote(file)}' loading='lazy' alt=''></a>"
            f"<figcaption><b>{e(Path(path).name)}</b>: {e(name)} ({cls})<br>{e(facts)}"
            "</figcaption></figure>"
        )
    errors = [r for r in rows if "error" in r]
    listed = "".join(f"<li>{e(r['error'])}</li>" for r in errors[:500])
    better = ", ".join(f"{k} {'higher' if v else 'lower'}" for k, v in SCORES.items())
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{e(title)}</h1>",
        f"<p>{summary['images']} images, {summary['rows']} image-class rows, {summary['errors']} "
        "errors; per image and class in <a href='images.jsonl'>images.jsonl</a>, means with "
        f"95% bootstrap intervals in <a href='summary.json'>summary.json</a>. Better: {e(better)}.</p>",
        _plots(rows, summary),
        f"<h2>Classes, worst first</h2><table><tr>{head}</tr>",
        f"<tr><td><b>all</b></td><td class='n'>{summary['rows']}</td>{overall}</tr>",
        "".join(body),
        "</table><h2>Worst images of each class</h2>",
        f"<div class='grid'>{''.join(figures)}</div>",
    ]
    if errors:
        page.append(f"<h2 class='error'>Errors ({len(errors)})</h2><ul>{listed}</ul>")
    return write_index(out, page)
