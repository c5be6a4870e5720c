"""The identity of a weights file: a short content hash, recorded in an exported model's metadata
(`ModelInfo.weights`) and used in the model cache's file names."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_identity"]


def file_identity(path: Path) -> str:
    """A short content hash naming a weights file in metadata and cache keys."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"file:{digest.hexdigest()[:16]}"
