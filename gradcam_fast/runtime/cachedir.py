"""Where gradcam_fast keeps what it makes on first use (exported models, TensorRT engines).

No imports from the package: the exporter's cache (`app/model_cache.py`) and the session's TensorRT
engines (`runtime/session.py`) both need the folder, and neither may import the other for it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "file_key"]


def cache_dir() -> Path:
    """$GRADCAM_FAST_CACHE, else $XDG_CACHE_HOME/gradcam_fast, else ~/.cache/gradcam_fast."""
    if env := os.environ.get("GRADCAM_FAST_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gradcam_fast"


def file_key(path: str | os.PathLike, *extra: object) -> str:
    """A short key naming a file as it is now (absolute path, size, modification time) plus
    `extra`: a cache entry made from the file is not reused once the file is replaced."""
    import hashlib

    stat = Path(path).stat()
    text = "|".join(map(str, (Path(path).resolve(), stat.st_size, stat.st_mtime_ns, *extra)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
