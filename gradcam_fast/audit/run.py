"""`audit_folder`: what `gradcam-fast audit` runs: image files in, DIR/images.jsonl,
DIR/summary.json and DIR/index.html out.

images.jsonl gets one line per image and class (or per error), appended a batch at a time and
flushed, so a run that stops keeps what it finished; a rerun into the same DIR with the same
settings skips the images already there (a last line cut short by a crash is dropped and its
image audited again; the file is rewritten atomically first), by absolute path. Images that
failed, and images whose annotations changed (each row keeps a digest of its image's
annotations), are audited again; the annotation file's errors are those of this run. DIR/settings.json records the
settings and the model; a rerun with others is refused. summary.json, index.html and the
overlays are written atomically, at the end, from every line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..app.steps import decode, slug
from ..format.protocols import Session
from ..io.files import atomic_file, save_png
from ..io.images import cam_to_image, load_image
from .annotations import Annotations, ObjectAnnotation
from .api import match_annotations
from .core import AuditItem, AuditSettings, audit_items
from .regions import class_regions
from .report import draw_overlay, worst_rows, write_report, write_summary
from .summary import summarize

__all__ = ["audit_folder", "read_lines"]

WORST_PER_CLASS = 3
OUTPUTS = ("images.jsonl", "settings.json", "summary.json", "index.html")


def read_lines(path: Path) -> list[dict]:
    """The complete JSON lines of an images.jsonl (a partial last line is left out)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # cut short by a crash: the rest is redone
    return rows


def _complete(rows: list[dict]) -> list[dict]:
    """The rows of images whose lines are all there (each line says how many its image has,
    `image_rows`), and the annotation-file errors."""
    count = Counter(r.get("path") for r in rows if "stage" not in r)
    return [r for r in rows if "stage" in r or r.get("image_rows") == count[r.get("path")]]


def _annotation_digest(objects: Sequence[ObjectAnnotation]) -> str:
    """A short digest of what an image's annotations say (classes, boxes, masks, stated size;
    not where they were read), so that a rerun redoes an image whose annotations changed."""
    said = sorted(
        json.dumps([o.cls, o.box, o.polygons, o.rle, o.size], default=str) for o in objects
    )
    return hashlib.sha1("\n".join(said).encode()).hexdigest()[:16]


def _kept(rows: list[dict], digests: dict[str, str]) -> list[dict]:
    """The complete rows of a previous run worth keeping: not the annotation file's errors (this
    run reports its own), not the rows of an image that failed (unreadable, non-finite maps: it
    is tried again) or whose annotations changed since (`digests` by absolute path; `{}`
    without annotations)."""
    rows = [r for r in _complete(rows) if "stage" not in r]
    failed = {r.get("path") for r in rows if "error" in r and "where" not in r}  # not a box's
    return [
        r
        for r in rows
        if r.get("path") not in failed
        and r.get("annotation_digest") == digests.get(os.path.abspath(r.get("path", "")))
    ]


def _check_settings(out: Path, settings: dict) -> None:
    """Refuse a DIR audited with other settings, or holding an images.jsonl that no audit wrote
    (settings.json is written before images.jsonl, so an audit's DIR always has both): its
    lines would be taken for audited images and skipped."""
    path = out / "settings.json"
    settings = json.loads(json.dumps(settings))  # tuples as lists, as read back
    if not path.is_file() and (out / "images.jsonl").exists():
        raise ValueError(
            f"{out} holds an images.jsonl without the settings.json of an audit (another "
            "command's output?): choose another --out"
        )
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != settings:
            changed = sorted(
                k for k in set(before) | set(settings) if before.get(k) != settings.get(k)
            )
            raise ValueError(
                f"{out} holds an audit made with other settings ({', '.join(changed)} differ): "
                "rerun with the same ones to resume, or choose another --out"
            )
    with atomic_file(path, "w") as f:
        json.dump(settings, f, indent=1)


def _remove_partial_files(out: Path) -> None:
    """Delete the temporary files (`io.files.atomic_file`'s `.NAME.*.part`) of the audit's own
    outputs that a run killed while writing one left in `out` and `out/worst`, so that nothing
    half-written stays in DIR; other files are left alone."""
    patterns = [f".{name}.*.part" for name in OUTPUTS]
    parts = [p for pattern in patterns for p in out.glob(pattern)]
    parts += (out / "worst").glob(".*.png.*.part") if (out / "worst").is_dir() else []
    for part in parts:
        if part.is_file():
            part.unlink(missing_ok=True)


def _pictures(
    session: Session, out: Path, rows: list[dict], objects, settings: AuditSettings
) -> dict:
    """Overlays of each class's worst images, with their boxes drawn: {(path, class): file}."""
    pictures = {}
    folder = out / "worst"
    folder.mkdir(exist_ok=True)
    meta = session.metadata
    for row in worst_rows(rows, WORST_PER_CLASS):
        path, cls = row["path"], row["class"]
        name = f"worst/{slug(Path(path).stem)}-{zlib.crc32(path.encode()):08x}_{cls}.png"
        if (out / name).is_file():
            pictures[(path, cls)] = name
            continue
        decoded = decode(path, meta, crop=settings.crop)
        if decoded.error is not None:
            continue
        x = decoded.tensor[None] if decoded.tensor is not None else decoded.view[None]
        result = session(x, [[cls] * meta.num_targets], method=settings.method)
        original = np.asarray(load_image(path))
        cam = cam_to_image(result.cams[0, 0].cpu().numpy(), decoded.crop)
        boxes = []
        if objects.get(path):
            regions, _ = class_regions(objects[path], original.shape[1], original.shape[0])
            boxes = regions[cls].boxes if cls in regions else []
        save_png(draw_overlay(original, cam, boxes, row.get("map_box")), out / name)
        pictures[(path, cls)] = name
    return pictures


def _local_runner(session: Session, settings: AuditSettings, workers: int) -> Callable:
    """Batches of `settings.batch_size` images, decoded by `workers` threads, audited here."""

    def run(keys: Sequence[str], objects: dict) -> Iterator[tuple[int, list[dict]]]:
        meta = session.metadata

        def read(key: str) -> AuditItem:
            return AuditItem(key, decode(key, meta, crop=settings.crop), objects.get(key, []))

        step = settings.batch_size
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="gradcam-audit") as pool:
            for start in range(0, len(keys), step):
                items = list(pool.map(read, keys[start : start + step]))
                yield len(items), audit_items(session, items, settings)

    return run


def audit_folder(
    paths: Sequence[Path],
    session: Session,
    out: Path,
    *,
    annotations: Annotations | None = None,
    roots: Sequence[Path] = (),
    settings: AuditSettings | None = None,
    workers: int = 2,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    runner: Callable | None = None,
) -> list[dict]:
    """Audit `paths` into `out` (see the module); returns every line of images.jsonl. With
    `annotations`, only the annotated images are audited (and annotations naming files not in
    `paths` are errors); `roots` are the folders their file names are relative to.
    `runner(keys, objects) -> iterator of (images done, rows)` replaces the local loop (the Ray
    runner of `distributed_audit` audits batches on actors)."""
    from tqdm import tqdm

    settings = settings or AuditSettings()
    out.mkdir(parents=True, exist_ok=True)
    if on_error is None:
        on_error = lambda message: tqdm.write(f"gradcam-fast: {message}", file=sys.stderr)  # noqa: E731
    meta = session.metadata
    model = {
        "arch": meta.arch,
        "layer": meta.target_layer,
        "weights": meta.weights,
        "size": meta.image_size,
    }
    _check_settings(out, {**dataclasses.asdict(settings), "model": model})
    _remove_partial_files(out)
    keys = [str(p) for p in paths]
    objects: dict[str, list[ObjectAnnotation]] = {}
    errors = []
    if annotations is not None:
        objects, missing = match_annotations(keys, annotations, roots)
        errors = [
            {"path": i.file, "where": i.where, "error": str(i), "stage": "annotations"}
            for i in [*annotations.issues, *missing]
        ]
        keys = [k for k in keys if k in objects]
    digests = {os.path.abspath(k): _annotation_digest(v) for k, v in objects.items()}
    lines_path = out / "images.jsonl"
    done_rows = _kept(read_lines(lines_path), digests)
    with atomic_file(lines_path, "w") as f:  # without lines cut short or images half written
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in done_rows)
    seen = {os.path.abspath(r["path"]) for r in done_rows if "path" in r}
    todo = [k for k in keys if os.path.abspath(k) not in seen]
    runner = runner or _local_runner(session, settings, workers)
    bar = tqdm(total=len(todo), unit="img", desc="audit", file=sys.stderr, disable=not progress)
    with open(lines_path, "a", encoding="utf-8") as f:
        for e in errors:
            on_error(e["error"])
        f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in errors)
        f.flush()
        for done, rows in runner(todo, objects):
            counts = Counter(r.get("path") for r in rows)
            for r in rows:
                r["image_rows"] = counts[r.get("path")]
                if annotations is not None:
                    r["annotation_digest"] = digests.get(os.path.abspath(r.get("path", "")))
                if "error" in r:
                    on_error(r["error"])
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            bar.update(done)
    bar.close()
    rows = read_lines(lines_path)
    summary = summarize(rows, tuple(meta.categories))
    summary["settings"] = {**dataclasses.asdict(settings), "model": model}
    write_summary(out, summary)
    pictures = _pictures(session, out, rows, objects, settings)
    title = f"Grad-CAM audit: {meta.arch}, layer {meta.target_layer}, weights {meta.weights}"
    write_report(out, rows, summary, title, pictures)
    return rows
