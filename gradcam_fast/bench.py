"""`gradcam-fast bench`: how fast Grad-CAM runs here, against the eager hook way, in one run.

A quick check for an installed package on a user's machine. The full comparison with the other
libraries and plain inference lives in the repository (`python -m benchmarks.report`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from .cli import EXIT_OK, add_model_options, open_session, positive

__all__ = ["add_parser", "time_calls"]


def time_calls(fn, rounds: int, warmup: int = 1, device: torch.device | None = None) -> list[float]:
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


def _run(args: argparse.Namespace) -> int:
    from .models import load_vgg
    from .reference import eager_gradcam

    if args.eager and args.model is not None:
        raise ValueError("--eager rebuilds the network from --arch/--weights: leave out --model")
    session = open_session(args, 1)
    meta = session.metadata
    model = None
    if args.eager:
        model = load_vgg(args.arch, args.weights, seed=args.seed).to(session.device)
    print(f"# {session!r}", file=sys.stderr)
    print("| batch | gradcam_fast ms | images/s | eager hook ms | speedup |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    gen = torch.Generator().manual_seed(0)
    for batch in args.batch_size:
        images = torch.randn(batch, 3, meta.image_size, meta.image_size, generator=gen)
        images = images.to(session.device)
        fast = statistics.median(
            time_calls(lambda x=images: session(x), args.rounds, device=session.device)
        )
        eager, speedup = "-", "-"
        if model is not None:
            slow = statistics.median(
                time_calls(
                    lambda x=images: eager_gradcam(model, x, None, meta.target_layer),
                    args.rounds,
                    device=session.device,
                )
            )
            eager, speedup = f"{slow * 1000:.1f}", f"{slow / fast:.2f}x"
        print(f"| {batch} | {fast * 1000:.1f} | {batch / fast:.1f} | {eager} | {speedup} |")
    return EXIT_OK


def add_parser(subparsers) -> None:
    """Add the `bench` subcommand."""
    p = subparsers.add_parser(
        "bench",
        help="time Grad-CAM calls here (and the eager hook way with --eager)",
        description="Median time of session calls on random images at each --batch-size, "
        "with the eager hook implementation alongside (--eager). Prints a markdown table.",
    )
    p.add_argument(
        "--batch-size", type=positive, nargs="+", default=[1, 8], help="batch sizes (default 1 8)"
    )
    p.add_argument("--rounds", type=positive, default=5, help="timed calls per batch size")
    p.add_argument("--eager", action="store_true", help="also time the eager hook way")
    add_model_options(p)
    p.set_defaults(func=_run)
