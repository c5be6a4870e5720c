"""index.html: a gallery of an `explain` output folder that opens from the folder itself."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from ..format.metadata import ModelMetadata
from .files import atomic_file

__all__ = ["write_gallery", "write_index"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em;width:240px}
figure img{width:224px;height:auto;display:block;image-rendering:auto}
figcaption{font-size:.8em;margin-top:.4em;overflow-wrap:anywhere}
ol{margin:.3em 0 0 1.2em;padding:0}.error{color:#a00}
"""


def write_gallery(out: Path, records: Sequence[dict], meta: ModelMetadata) -> Path:
    """index.html in `out`: one card per overlay with the image's top classes; failed files
    listed with their errors. Only relative links, only to files in `out` that exist."""
    e = html.escape
    names = meta.categories
    cards, errors = [], []
    for record in records:
        if "error" in record:
            errors.append(f"<li><code>{e(record['path'])}</code>: {e(record['error'])}</li>")
            continue
        top = "".join(
            f"<li>{e(p['name'] or str(p['index']))} ({p['index']}): {p['probability']:.3f}</li>"
            for p in record["predictions"]
        )
        pngs = [f for f in record.get("outputs", []) if f.endswith(".png") and (out / f).is_file()]
        for file, index in zip(pngs, record["explained"], strict=False):
            label = f"{names[index]} ({index})" if names else f"class {index}"
            href = quote(file)
            cards.append(
                f'<figure><a href="{href}"><img src="{href}" loading="lazy" alt="{e(label)}"></a>'
                f"<figcaption><b>{e(Path(record['path']).name)}</b><br>explains {e(label)}"
                f"<ol>{top}</ol></figcaption></figure>"
            )
    title = f"Grad-CAM: {meta.arch}, layer {meta.target_layer}"
    body = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{e(title)}</h1>",
        f"<p>weights {e(meta.weights)}; {len(records) - len(errors)} images explained, "
        f"{len(errors)} failed; details in <a href='results.jsonl'>results.jsonl</a></p>",
        f"<div class='grid'>{''.join(cards)}</div>",
    ]
    if errors:
        body.append(f"<h2 class='error'>Failed files</h2><ul>{''.join(errors)}</ul>")
    return write_index(out, body)


def write_index(out: Path, parts: Sequence[str]) -> Path:
    """`out`/index.html from the page's parts (one line each), closed and written atomically: a
    reader never sees half a page. Shared by the explain gallery and the audit report."""
    path = out / "index.html"
    with atomic_file(path, "w") as f:
        f.write("\n".join([*parts, "</body></html>\n"]))
    return path
