"""Benchmark profiles: "tiny" (the default, seconds: what CI and plain `pytest` run) and "full"
(VGG19 at 224, minutes: what the report runs). Chosen with $GRADCAM_BENCH_PROFILE."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["PROFILE_ENV", "ExplainRun", "Profile", "active_profile", "get_profile"]

PROFILE_ENV = "GRADCAM_BENCH_PROFILE"


@dataclass(frozen=True)
class ExplainRun:
    """bench_explain.py's folder and CLI runs."""

    images: int  # files in the folder
    side: int  # their longer side, pixels
    batch_size: int
    workers: int  # decoding/writing threads of the overlapped run
    rounds: int


@dataclass(frozen=True)
class Profile:
    """What one benchmark run measures and how often."""

    name: str
    model: str  # "vgg19" (seeded random weights) or "tiny" (a small seeded VGG, for CI)
    image_size: int
    batches: tuple[int, ...]  # batch sizes of the contender groups
    rounds: dict[int, int]  # timed rounds per batch size (the check call is the warm-up)
    k_batches: tuple[int, ...]  # batch sizes of the K=5 vs K=1 group
    explain: ExplainRun
    serve_requests: dict[int, int]  # serve_load.py: requests sent at each concurrency
    serve_bare_rounds: int  # serve_load.py: timed calls of the bare session next to each level
    num_targets: int = 5  # K of the multi-target group
    memory_batch: int = 8  # batch of the separate-process peak RSS probes
    postprocess_batch: int = 8  # batch of the post-processing line


PROFILES = {
    "tiny": Profile(
        name="tiny",
        model="tiny",
        image_size=32,
        batches=(1, 8),
        rounds={1: 1, 8: 1},
        k_batches=(8,),
        explain=ExplainRun(images=12, side=400, batch_size=4, workers=2, rounds=1),
        serve_requests={1: 4, 8: 16, 32: 32},
        serve_bare_rounds=3,
    ),
    "full": Profile(
        name="full",
        model="vgg19",
        image_size=224,
        batches=(1, 8, 32),
        rounds={1: 7, 8: 3, 32: 2},
        k_batches=(1, 8),
        explain=ExplainRun(images=64, side=2048, batch_size=16, workers=4, rounds=3),
        serve_requests={1: 24, 8: 64, 32: 128},
        serve_bare_rounds=10,
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called `name`, with an error listing the valid names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown benchmark profile {name!r}; set {PROFILE_ENV} to one of {sorted(PROFILES)}"
        ) from None


def active_profile() -> Profile:
    """The profile named by $GRADCAM_BENCH_PROFILE, "tiny" when unset."""
    return get_profile(os.environ.get(PROFILE_ENV, "tiny"))
