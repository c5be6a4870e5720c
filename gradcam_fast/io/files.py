"""Files written atomically (a temporary file renamed into place): any file, PNG pixels, .npy
arrays."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

__all__ = ["atomic_file", "save_npy", "save_png"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to `path` and rename it to `path` only when the block succeeds,
    so readers (and interrupted runs) never see a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; give the usual permissions of a new file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_png(array: np.ndarray, path: str | os.PathLike, compress_level: int = 1) -> Path:
    """Write uint8 [H, W, 3] (RGB) or [H, W] (gray) pixels as a PNG, atomically. Returns `path`.

    `compress_level` 1 (zlib's fastest): for a 224 x 224 overlay, 4 ms and 90 kB here, where
    PIL's default 6 takes 17 ms for 79 kB.
    """
    array = np.asarray(array)
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] != 3)
    ):
        raise ValueError(
            f"expected uint8 [H, W, 3] or [H, W], got {array.dtype} {list(array.shape)}"
        )
    with atomic_file(path) as f:
        Image.fromarray(array).save(f, format="PNG", compress_level=compress_level)
    return Path(path)


def save_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an array as .npy, atomically. Returns `path`."""
    with atomic_file(path) as f:
        np.save(f, np.asarray(array), allow_pickle=False)
    return Path(path)
