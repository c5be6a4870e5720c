"""The `gradcam-fast` console script: one parser, a module per subcommand.

Each module named in SUBCOMMANDS is one subcommand (its name with '-' for '_'): HELP and
DESCRIPTION (and EPILOG, if any) for --help, `add_arguments(parser)` for its options, and
`run(args) -> exit status`, which turns the arguments into library calls. Handlers import the
library when they run, so `gradcam-fast --help` loads neither torch nor onnx. A new subcommand
is one module here and one entry in SUBCOMMANDS.
Errors a user can fix print one line (no traceback unless --verbose) and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

from .options import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, error_line

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "SUBCOMMANDS",
    "build_parser",
    "error_line",
    "main",
]

# Modules of this package that add a subcommand, in the order --help lists them.
SUBCOMMANDS: list[str] = [
    "export",
    "explain",
    "explain_dataset",
    "audit",
    "bench",
    "serve",
    "layers",
    "sweep",
]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the full usage is in --help); subparsers inherit the class."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog="gradcam-fast",
        description="Grad-CAM for CNNs (every CNN of torchvision's registry) at the cost of one forward pass.",
    )
    parser.add_argument("--version", action="version", version=f"gradcam_fast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        command = importlib.import_module(f".{name}", __name__)
        sub = subparsers.add_parser(
            name.replace("_", "-"),
            help=command.HELP,
            description=command.DESCRIPTION,
            epilog=getattr(command, "EPILOG", None),
        )
        command.add_arguments(sub)
        sub.set_defaults(func=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    # Before torch loads its OpenMP runtime (it reads this once): idle OpenMP threads sleep
    # instead of spinning for several ms after each torch op, which on a small CPU took cores
    # from ONNX Runtime's next run (benchmarks/RESULTS.md). The user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="gradcam-fast: %(message)s",
    )
    if not args.verbose:  # warnings as one line each, without source lines
        warnings.showwarning = lambda message, category, *rest, **kw: print(
            f"gradcam-fast: warning: {' '.join(str(message).split())}", file=sys.stderr
        )
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("gradcam-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line; the traceback only with --verbose
        if args.verbose:
            raise
        print(f"gradcam-fast: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
