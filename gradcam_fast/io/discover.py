"""Finding the image files to explain: files, folders (recursive) and glob patterns, in order.

`collect_inputs` is what `gradcam-fast explain` reads; `dataset_sources` is the same for Ray Data,
which also reads URIs (s3://, local://, ...) itself.
"""

from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

from .images import IMAGE_EXTENSIONS

__all__ = ["collect_inputs", "dataset_sources", "image_files", "is_uri"]


def image_files(folder: Path, exclude: Path | None = None) -> list[Path]:
    """The image files in `folder` and its subfolders, sorted: files with an image extension
    (IMAGE_EXTENSIONS), skipping hidden files and folders and anything under `exclude`. The one
    folder listing of the package: explain's inputs and int8 calibration sets alike."""
    excluded = exclude.resolve() if exclude is not None else None
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).parts
        if any(part.startswith(".") for part in relative) or not path.is_file():
            continue
        if excluded is not None and path.resolve().is_relative_to(excluded):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            found.append(path)
    return found


def collect_inputs(items: Sequence[str], exclude: Path | None = None) -> list[Path]:
    """Image files named by `items` (files, directories searched recursively, glob patterns), in
    order and without duplicates.

    Directories contribute files with an image extension (IMAGE_EXTENSIONS), skipping hidden
    files and folders and anything under `exclude` (the output folder). A file named explicitly
    is taken whatever its extension; an item that names nothing is kept as a path, so that it is
    reported as a missing file like any other unusable input.
    """
    found: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    def scan(folder: Path) -> None:
        for path in image_files(folder, exclude):
            add(path)

    for item in items:
        path = Path(item)
        if path.is_dir():
            scan(path)
        elif path.exists():
            add(path)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            for match in matches:
                scan(Path(match)) if Path(match).is_dir() else add(Path(match))
            if not matches:
                add(path)
        else:
            add(path)
    return found


def is_uri(text: str) -> bool:
    """True for a URI Ray reads itself (s3://bucket/..., local://...), not a local path."""
    return "://" in text


def dataset_sources(items: Sequence[str], out: str) -> tuple[list[str], tuple[str, ...] | None]:
    """What Ray reads, and the extensions it keeps. Local files, folders and globs become the
    image files in them as `collect_inputs` finds them (the output folder excluded), all read;
    URIs pass as they are, and only files with an image extension are read."""
    if any(is_uri(item) for item in items):
        return list(items), tuple(IMAGE_EXTENSIONS)
    found = collect_inputs(items, exclude=None if is_uri(out) else Path(out))
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file, folder or glob match: {', '.join(missing)}")
    if not found:
        raise FileNotFoundError(f"no image files found in {' '.join(items)}")
    return [str(p.resolve()) for p in found], None
