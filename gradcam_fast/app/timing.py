"""Timing session calls on this machine, with the eager reference alongside (`gradcam-fast bench`).

A quick check for an installed package on a user's machine. The full comparison with the other
libraries and plain inference lives in the repository (`python -m benchmarks.report`).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..check.reference import eager_gradcam
from ..format.protocols import Session

__all__ = ["BenchRow", "time_calls", "time_session"]


def time_calls(
    fn: Callable[[], object], rounds: int, warmup: int = 1, device: torch.device | None = None
) -> list[float]:
    """Seconds of each of `rounds` calls of `fn` after `warmup` calls (the GPU synchronized
    around each call when `device` is a CUDA device)."""
    cuda = device is not None and device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


class BenchRow(NamedTuple):
    """Median seconds per call at one batch size; `eager` None when not timed."""

    batch: int
    seconds: float
    eager: float | None


def time_session(
    session: Session, batch_sizes: Sequence[int], rounds: int, model: nn.Module | None = None
) -> Iterator[BenchRow]:
    """Median time of `rounds` session calls on seeded random images at each batch size, and
    of `eager_gradcam` on `model` (on the session's device) when given; one row per size."""
    meta = session.metadata
    gen = torch.Generator().manual_seed(0)
    for batch in batch_sizes:
        images = torch.randn(batch, 3, meta.image_size, meta.image_size, generator=gen)
        images = images.to(session.device)
        fast = statistics.median(
            time_calls(lambda x=images: session(x), rounds, device=session.device)
        )
        eager = None
        if model is not None:
            eager = statistics.median(
                time_calls(
                    lambda x=images: eager_gradcam(model, x, None, meta.target_layer),
                    rounds,
                    device=session.device,
                )
            )
        yield BenchRow(batch, fast, eager)
