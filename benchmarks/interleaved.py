"""Ratios from interleaved calls: `python -m benchmarks.interleaved --models DIR [--profile full]`.

Rounds of `benchmarks.timing.interleave` of the sessions, the ORT floor and the eager hook (the
ratios the targets name) at every batch size of the profile, the eager hook only up to batch 8
(above, one call takes tens of seconds). Every contender is checked against the eager reference
first. Prints one JSON object. `rounds_by_batch` measures any contenders (benchmarks.lowp).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.checks import check_output
from benchmarks.contenders import (
    SESSIONS,
    ContenderUnavailable,
    Setup,
    open_contender,
    seeded_images,
)
from benchmarks.timing import EAGER, FLOOR, interleave, round_robin_ratios

__all__ = ["ROUNDS", "main", "rounds_by_batch"]

# rounds per batch size: enough for a median of ratios, a few minutes in all on 2 cores
ROUNDS = {1: 9, 8: 5, 32: 3}
EAGER_MAX_BATCH = 8


def rounds_by_batch(
    setup: Setup,
    names: list[str],
    batches: list[int],
    rounds: Callable[[int], int],
    slow: tuple[str, ...] = (EAGER,),
    strict: bool = True,
) -> dict[int, dict[str, dict[str, float]]]:
    """Open the contenders `names` (those whose library is missing left out), then at each batch
    size check each against the eager reference (a failure raises, or with `strict=False` is
    reported and the contender still timed) and interleave `rounds(batch)` rounds, the `slow`
    ones only up to batch EAGER_MAX_BATCH. Ratios by batch size and contender."""
    from gradcam_fast.check.reference import eager_gradcam

    contenders = {}
    for name in names:
        try:
            contenders[name] = open_contender(name, setup)
        except ContenderUnavailable as exc:
            print(f"# {name} left out: {exc}", file=sys.stderr)
    results = {}
    for batch in batches:
        images = seeded_images(batch, setup.image_size)
        reference = eager_gradcam(setup.model, images, None, setup.target_layer)
        classes = reference.target_classes
        here = [n for n in contenders if n not in slow or batch <= EAGER_MAX_BATCH]
        for name in here:
            c = contenders[name]
            try:
                check_output(name, c.output(c.run(images, classes)), reference)
            except AssertionError as exc:
                if strict:
                    raise
                print(f"# CHECK FAILED at batch {batch}: {exc}", file=sys.stderr, flush=True)
        calls = {n: (lambda c=contenders[n], x=images, t=classes: c.run(x, t)) for n in here}
        results[batch] = round_robin_ratios(interleave(calls, rounds(batch)))
        print(f"# batch {batch}: {json.dumps(results[batch])}", file=sys.stderr, flush=True)
    for contender in contenders.values():
        contender.close()
    return results


def measure(models: Path, profile_name: str) -> dict[str, Any]:
    """The session, the floor and the eager hook at each batch size of the profile."""
    from benchmarks.config import get_profile
    from benchmarks.contenders import make_model
    from gradcam_fast.runtime.session import cpu_count

    torch.set_num_threads(cpu_count())
    profile = get_profile(profile_name)
    setup = Setup.from_folder(make_model(profile.model), models, profile.image_size)
    full = profile.name == "full"
    rounds = lambda batch: ROUNDS.get(batch, 3) if full else 1  # noqa: E731
    results = rounds_by_batch(setup, [*SESSIONS, FLOOR, EAGER], list(profile.batches), rounds)
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
