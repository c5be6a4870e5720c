"""The one timer of the benchmarks: seconds of each call after untimed warm-up calls (CUDA events
on a GPU), and interleaved rounds, whose ratios are medians of the ratios within a round.

The pytest-benchmark groups time each contender's rounds back to back, so a burst of another job
during one contender's rounds skews that contender alone. `interleave` visits every contender
once a round, in a shuffled order (seeded), so a slow spell of the machine raises both sides of a
ratio together. A visit is an untimed call and then the timed one: right after another model ran,
the first call of a model is slower (its weights and buffers are no longer in the caches; 20% at
batch 1 here), which is not the steady state of a service that calls one model again and again.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["EAGER", "FLOOR", "interleave", "median_s", "round_robin_ratios", "time_calls"]

FLOOR = "floor_ort"
EAGER = "eager_hook"


def time_calls(
    fn: Callable[[], Any], rounds: int, warmup: int = 0, cuda: bool = False
) -> list[float]:
    """Seconds of each of `rounds` calls of `fn`, after `warmup` untimed ones; with `cuda`,
    measured with CUDA events (the device's time, the warm-up synchronized first)."""
    for _ in range(warmup):
        fn()
    if cuda:
        import torch

        torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return times


def median_s(fn: Callable[[], Any], rounds: int, warmup: int = 0, cuda: bool = False) -> float:
    """The median of `time_calls`."""
    return statistics.median(time_calls(fn, rounds, warmup, cuda))


def interleave(
    calls: dict[str, Callable[[], Any]], rounds: int, warm: int = 1, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per call of each of `calls` (name -> no-argument callable): every round visits
    each one once, in a shuffled order (so none always runs first or always follows the same
    one); a visit makes `warm` untimed calls, then the timed one."""
    order = list(calls)
    shuffle = random.Random(seed).shuffle
    times: dict[str, list[float]] = {name: [] for name in order}
    for _ in range(rounds):
        shuffle(order)
        for name in order:
            times[name] += time_calls(calls[name], 1, warm)
    return times


def round_robin_ratios(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per contender: median ms, the median over rounds of (contender / floor) and of
    (eager hook / contender), where those contenders were timed."""
    out: dict[str, dict[str, float]] = {}
    for name, ts in times.items():
        row = {"median_ms": statistics.median(ts) * 1e3, "rounds": len(ts)}
        if FLOOR in times:
            row["ratio_to_floor"] = statistics.median(
                t / f for t, f in zip(ts, times[FLOOR], strict=True)
            )
        if EAGER in times:
            row["speedup_vs_eager"] = statistics.median(
                e / t for e, t in zip(times[EAGER], ts, strict=True)
            )
        out[name] = row
    return out
