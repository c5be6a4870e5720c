"""Where gradcam_fast keeps what it makes on first use (exported models, TensorRT engines).

No imports from the package: the exporter's cache (`cache.py`) and the session's TensorRT
engines (`runtime.py`) both need the folder, and neither may import the other for it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """$GRADCAM_FAST_CACHE, else $XDG_CACHE_HOME/gradcam_fast, else ~/.cache/gradcam_fast."""
    if env := os.environ.get("GRADCAM_FAST_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gradcam_fast"
