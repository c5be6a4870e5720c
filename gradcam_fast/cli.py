"""The `gradcam-fast` console script: one parser, a subcommand per job.

Each subcommand module adds its parser with an `add_parser(subparsers)` function and sets
`func`; errors a user can fix print one line (no traceback unless --verbose) and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from .precision_options import add_precision_options, precision_kwargs

__all__ = [
    "add_class_options",
    "add_model_options",
    "fraction",
    "main",
    "non_negative_float",
    "non_negative_int",
    "open_session",
    "positive",
]

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2


def positive(text: str) -> int:
    """argparse type: an int of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int of 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number of 0 or more."""
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number between 0 and 1."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def add_class_options(parser: argparse.ArgumentParser) -> None:
    """--class (repeatable) and --top-k: which classes each image's maps explain."""
    targets = parser.add_argument_group("classes to explain")
    targets.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="CLASS",
        help="class index or name (e.g. 281 or tabby); repeatable: one map per class",
    )
    targets.add_argument(
        "--top-k", type=positive, help="explain each image's K most likely classes (default 1)"
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options that pick the ONNX model: --model FILE, or what to export (and cache) on first use."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, help="an exported gradcam_fast .onnx file")
    _add_network_options(group)
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument(
        "--tensorrt",
        action="store_true",
        help="run on ONNX Runtime's TensorRT provider (CUDA; needs onnxruntime-gpu and "
        "TensorRT; the first run per batch size builds an engine, cached on disk)",
    )
    add_precision_options(group)


def _add_network_options(group) -> None:
    """--arch, --weights, --seed, --target-layer, --image-size: what is exported."""
    from .models import ARCHS

    group.add_argument("--arch", default="vgg19", choices=sorted(ARCHS))
    group.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (torchvision's, downloaded once), a state_dict file, or 'random'",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    group.add_argument("--target-layer", help="layer of model.features (default: last before pool)")
    group.add_argument(
        "--image-size", type=positive, default=224, help="fixed input size S (S x S)"
    )


def open_session(
    args: argparse.Namespace, num_targets: int = 1, gradients: bool = True, **session_options
):
    """The session for --model, or for the cached export of --arch/--weights/... (made if
    missing; `gradients=False`: the channel-weights model, for Grad-CAM only)."""
    from .cache import cached_model
    from .runtime import GradCAMSession

    int8 = precision_kwargs(args)
    path = args.model or cached_model(
        args.arch,
        args.weights,
        target_layer=args.target_layer,
        image_size=args.image_size,
        num_targets=num_targets,
        seed=args.seed,
        gradients=gradients,
        **int8,
    )
    return GradCAMSession(path, device=args.device, tensorrt=args.tensorrt, **session_options)


def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    path = export_onnx(
        args.arch,
        args.out,
        target_layer=args.target_layer,
        image_size=args.image_size,
        num_targets=args.num_targets,
        weights=args.weights,
        opset=args.opset,
        validate=not args.no_validate,
        seed=args.seed,
        raw_pixels=args.raw_pixels,
        fp16=args.fp16,
        external_data=args.external_data,
        gradients=not args.channel_weights_only,
        **precision_kwargs(args),
    )
    print(path)
    return EXIT_OK


def _add_export_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a VGG's Grad-CAM graph to ONNX",
        description="Export the Grad-CAM graph of a VGG to ONNX, validated against the eager "
        "implementation in ONNX Runtime unless --no-validate.",
    )
    p.add_argument("-o", "--out", type=Path, required=True, help="output .onnx path")
    _add_network_options(p)
    p.add_argument("--num-targets", "-k", type=int, default=1, help="maps per image (K)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-validate", action="store_true", help="skip the check against eager")
    p.add_argument(
        "--channel-weights-only",
        action="store_true",
        help="output Grad-CAM's channel weights instead of the gradients: skips the first "
        "Linear's VJP (faster at small batches); serves --method gradcam only",
    )
    p.add_argument(
        "--external-data",
        action="store_true",
        help="weights in OUT.data beside the model (memory-mapped with low_memory sessions)",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="float16 body, float32 head and I/O (for the CUDA provider)",
    )
    p.add_argument(
        "--raw-pixels",
        action="store_true",
        help="take uint8 [B,S,S,3] decoded RGB pixels as input; normalize inside the model",
    )
    add_precision_options(p, export=True)
    p.set_defaults(func=_export)


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (the full usage is in --help); subparsers inherit the class."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def error_line(exc: BaseException) -> str:
    """One line for an exception: OSError as 'path: reason', multi-line messages joined, and the
    type named where the message alone would not say what went wrong."""
    if isinstance(exc, OSError) and exc.strerror:
        names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
        return f"{' -> '.join(names)}: {exc.strerror}" if names else exc.strerror
    message = " ".join(str(exc).split())
    if not isinstance(exc, ValueError | TypeError | RuntimeError | OSError) or not message:
        hint = " (rerun with --verbose for the traceback)"
        return f"{type(exc).__name__}: {message}{hint}" if message else type(exc).__name__ + hint
    return message


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="gradcam-fast",
        description="Grad-CAM for VGG-family CNNs at the cost of one forward pass.",
    )
    parser.add_argument("--version", action="version", version=f"gradcam_fast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_export_parser(subparsers)
    for module in _SUBCOMMAND_MODULES:
        __import__(f"gradcam_fast.{module}", fromlist=["add_parser"]).add_parser(subparsers)
    return parser


# Modules that contribute a subcommand through `add_parser(subparsers)`.
_SUBCOMMAND_MODULES: list[str] = ["explain", "explain_dataset", "bench"]


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


if __name__ == "__main__":
    sys.exit(main())
