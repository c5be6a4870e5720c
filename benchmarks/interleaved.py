"""Ratios from interleaved calls: `python -m benchmarks.interleaved --models DIR [--profile full]`.

The pytest-benchmark groups time each contender's rounds back to back, so a burst of another job
during one contender's rounds skews that contender alone. Here every round visits each contender
once, in a shuffled order (seeded), and a ratio is the median over rounds of the ratio within
the round: a slow spell of the machine raises both sides of a ratio together. A visit is one
untimed call and then the timed one: right after another model ran, the first call of a model
is slower (its weights and buffers are no longer in the caches; 20% at batch 1 here), which is
not the steady state of a service that calls one model again and again.

Contenders: the session (full and channel-weights models), the ORT floor and the eager hook
(the ratios the targets name), at every batch size of the profile; the eager hook is left out
at batch sizes above 8, where one call takes tens of seconds and its ratio is already known from
the pytest-benchmark groups. Every contender is checked against the eager reference first, as in
the suite. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["ROUNDS", "interleave", "main", "round_robin_ratios"]

# rounds per batch size: enough for a median of ratios, a few minutes in all on 2 cores
ROUNDS = {1: 9, 8: 5, 32: 3}
FLOOR = "floor_ort"
EAGER = "eager_hook"
SESSIONS = (
    "gradcam_fast",
    "gradcam_fast_lean",
    "gradcam_fast_int8",
    "torch_float32",
    "torch_bfloat16",
)
EAGER_MAX_BATCH = 8


def interleave(
    calls: dict[str, Any], rounds: int, warm: int = 1, seed: int = 0
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
            for _ in range(warm):
                calls[name]()
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
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


def measure(models: Path, profile_name: str) -> dict[str, Any]:
    """Check, warm up and interleave the contenders at each batch size of the profile."""
    import torch

    from benchmarks.config import get_profile
    from benchmarks.contenders import Setup, check_output, make_model, open_contender
    from gradcam_fast.check.reference import eager_gradcam
    from gradcam_fast.model.loading import default_target_layer
    from gradcam_fast.runtime.session import cpu_count

    torch.set_num_threads(cpu_count())
    profile = get_profile(profile_name)
    model = make_model(profile.model)
    paths = {p.stem: p for p in models.glob("*.onnx")}
    setup = Setup(model, default_target_layer(model), profile.image_size, paths)
    names = [*SESSIONS, FLOOR, EAGER]
    contenders = {name: open_contender(name, setup) for name in names}
    results: dict[str, Any] = {}
    for batch in profile.batches:
        gen = torch.Generator().manual_seed(batch)
        images = torch.randn(batch, 3, profile.image_size, profile.image_size, generator=gen)
        reference = eager_gradcam(model, images, None)
        classes = reference.target_classes
        here = [n for n in names if n != EAGER or batch <= EAGER_MAX_BATCH]
        for name in here:  # the check call doubles as the warm-up
            contender = contenders[name]
            check_output(name, contender.output(contender.run(images, classes)), reference)
        calls = {n: (lambda c=contenders[n], x=images, t=classes: c.run(x, t)) for n in here}
        rounds = ROUNDS.get(batch, 3) if profile.name == "full" else 1
        results[str(batch)] = round_robin_ratios(interleave(calls, rounds))
    for contender in contenders.values():
        contender.close()
    return {"profile": profile.name, "batches": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.interleaved", description=__doc__)
    parser.add_argument("--models", type=Path, required=True, help="folder of the run's exports")
    parser.add_argument("--profile", default="tiny")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.models, args.profile)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
