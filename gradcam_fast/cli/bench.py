"""`gradcam-fast bench`: `timing.time_session` on the command line, as a markdown table."""

from __future__ import annotations

import argparse
import sys

from .options import EXIT_OK, add_model_options, network_options, positive, session_options
from .precision import choice_line

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    from ..app.model_cache import open_session
    from ..app.timing import time_session
    from ..model.loading import load_model

    if args.eager and args.model is not None:
        raise ValueError("--eager rebuilds the network from --arch/--weights: leave out --model")
    session = open_session(**session_options(args), **network_options(args))
    model = None
    if args.eager:
        model = load_model(args.arch, args.weights, seed=args.seed).to(session.device)
    print(f"# {session!r}", file=sys.stderr)
    print(choice_line(args, session), file=sys.stderr)
    print("| batch | gradcam_fast ms | images/s | eager reference ms | speedup |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in time_session(session, args.batch_size, args.rounds, model):
        eager, speedup = "-", "-"
        if row.eager is not None:
            eager, speedup = f"{row.eager * 1000:.1f}", f"{row.eager / row.seconds:.2f}x"
        print(
            f"| {row.batch} | {row.seconds * 1000:.1f} | {row.batch / row.seconds:.1f} | "
            f"{eager} | {speedup} |"
        )
    return EXIT_OK


HELP = "time Grad-CAM calls here (and the eager reference with --eager)"
DESCRIPTION = """\
Median time of session calls on random images at each --batch-size, with the eager reference
(eager_gradcam: hook + full backward) alongside (--eager). Prints a markdown table.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `gradcam-fast bench`."""
    p.add_argument(
        "--batch-size", type=positive, nargs="+", default=[1, 8], help="batch sizes (default 1 8)"
    )
    p.add_argument("--rounds", type=positive, default=5, help="timed calls per batch size")
    p.add_argument("--eager", action="store_true", help="also time the eager reference")
    add_model_options(p)
