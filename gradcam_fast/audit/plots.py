"""Small inline SVG charts for the audit report (no matplotlib): curves and horizontal bars."""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["bars_svg", "curves_svg"]

_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd")


def curves_svg(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    title: str,
    width: int = 360,
    height: int = 220,
) -> str:
    """Line chart of (label, xs, ys) series with x and y in [0, 1]."""
    left, bottom, top, right = 40, 30, 24, 10
    pw, ph = width - left - right, height - top - bottom

    def px(x: float, y: float) -> str:
        return f"{left + x * pw:.1f},{top + (1 - min(max(y, 0.0), 1.0)) * ph:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="{left}" y="14" font-size="12">{html.escape(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    for v in (0.0, 0.5, 1.0):
        y = top + (1 - v) * ph
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{v:g}</text>'
        )
        parts.append(
            f'<text x="{left + v * pw:.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{v:g}</text>'
        )
    for n, (label, xs, ys) in enumerate(series):
        color = _COLORS[n % len(_COLORS)]
        points = " ".join(px(x, y) for x, y in zip(xs, ys, strict=True))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        parts.append(
            f'<text x="{left + pw - 4}" y="{top + 14 + 14 * n}" font-size="11" text-anchor="end" '
            f'fill="{color}">{html.escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(items: Sequence[tuple[str, float]], title: str, width: int = 360) -> str:
    """Horizontal bars of (label, value in [0, 1]), in the order given."""
    row, left, top = 16, 150, 22
    height = top + row * len(items) + 8
    pw = width - left - 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
        f'<text x="4" y="14" font-size="12">{html.escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(items):
        y = top + i * row
        w = max(0.0, min(1.0, value)) * pw
        parts.append(
            f'<text x="{left - 4}" y="{y + 11}" font-size="10" text-anchor="end">'
            f"{html.escape(label[:24])}</text>"
            f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row - 4}" fill="#1f77b4"/>'
            f'<text x="{left + w + 3:.1f}" y="{y + 11}" font-size="10">{value:.3f}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
