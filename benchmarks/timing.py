"""The one timer of the benchmarks: seconds of each call after untimed warm-up calls (CUDA events
on a GPU), and interleaved rounds, whose ratios are medians of the ratios within a round.

`interleave` visits every contender once a round in a shuffled order, so a slow spell of the
machine raises both sides of a ratio together (back-to-back rounds skew one contender alone). A
visit is an untimed call, then the timed one: right after another model ran, a model's first call
is slower (its weights left the caches: 20% at batch 1 here), unlike a service's steady state.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["EAGER", "FLOOR", "interleave", "median_ratio", "median_s", "round_robin_ratios",
           "time_calls"]  # fmt: skip

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


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    """The median of the ratios within each round: a slow spell hits both sides of a round."""
    return statistics.median(a / b for a, b in zip(numerators, denominators, strict=True))


def round_robin_ratios(times: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per contender: median ms, the median over rounds of (contender / floor) and of
    (eager hook / contender), where those contenders were timed."""
    out: dict[str, dict[str, float]] = {}
    for name, ts in times.items():
        row = {"median_ms": statistics.median(ts) * 1e3, "rounds": len(ts)}
        if FLOOR in times:
            row["ratio_to_floor"] = median_ratio(ts, times[FLOOR])
        if EAGER in times:
            row["speedup_vs_eager"] = median_ratio(times[EAGER], ts)
        out[name] = row
    return out
