"""The one table renderer of the benchmarks' reports: markdown, one row per mapping or sequence."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["markdown_table", "section"]


def markdown_table(
    header: str, align: str, row: str, rows: Iterable[Mapping | Sequence]
) -> list[str]:
    """The lines of a markdown table: `header` the titles separated by " | ", `align` one letter
    per column ("l": `---`, "r": `---:`), `row` a `str.format` template of a row's cells (also
    separated by " | ") filled from each of `rows`, by name from a mapping, else by position."""
    rule = " | ".join("---:" if a == "r" else "---" for a in align)
    cells = (row.format(**r) if isinstance(r, Mapping) else row.format(*r) for r in rows)
    return [f"| {header} |", f"| {rule} |", *(f"| {c} |" for c in cells)]


def section(
    title: str,
    header: str,
    align: str,
    row: str,
    rows: Iterable[Mapping | Sequence],
    note: str = "",
) -> list[str]:
    """A "### `title`" heading, the `note` paragraph if any, the `markdown_table`, each followed by
    a blank line."""
    heading = [f"### {title}", "", *([note, ""] if note else [])]
    return [*heading, *markdown_table(header, align, row, rows), ""]
