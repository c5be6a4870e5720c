"""What every subcommand shares: exit codes, argparse types, the model and class options, one
line per error, and the summary line. Imports nothing heavy: `gradcam-fast --help` builds every
parser without torch or onnx."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..model.catalog import ARCH_TABLE, ARCHS
from .precision import add_precision_options, precision_kwargs, session_kwargs

__all__ = [
    "EXIT_ERROR",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "add_class_options",
    "add_model_options",
    "add_network_options",
    "error_line",
    "finish",
    "fraction",
    "network_options",
    "non_negative_float",
    "non_negative_int",
    "pick",
    "positive",
    "session_options",
    "usage_error",
]

EXIT_OK, EXIT_SOME_FAILED, EXIT_ERROR = 0, 1, 2


def _number(kind: type, low: float | None, high: float | None, what: str):
    """An argparse type: `kind(text)` within [low, high], else an error saying `what`."""

    def parse(text: str):
        value = kind(text)
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {value}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


positive = _number(int, 1, None, "at least 1")
non_negative_int = _number(int, 0, None, "0 or more")
non_negative_float = _number(float, 0.0, None, "0 or more")
fraction = _number(float, 0.0, 1.0, "between 0 and 1")


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


def add_network_options(group) -> None:
    """--arch, --weights, --seed, --target-layer, --image-size: what is exported."""
    group.add_argument(
        "--arch",
        default="vgg19",
        choices=sorted(ARCHS),
        metavar="ARCH",
        help="a CNN of torchvision's registry (vgg19, resnet50, efficientnet_b0, convnext_tiny, ...; "
        "`gradcam-fast layers --list-archs` lists all 68)",
    )
    group.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (torchvision's, downloaded once), a state_dict file, or 'random'",
    )
    group.add_argument("--seed", type=int, default=0, help="seed for --weights random")
    group.add_argument(
        "--target-layer",
        help="a layer name as `gradcam-fast layers ARCH` lists them (features.35, layer4, "
        "layer4.1.relu_1, ...; default: the last stage's output)",
    )
    group.add_argument(
        "--image-size",
        type=positive,
        help="fixed input size S (S x S; default: the arch's weights' crop size, 224 for most)",
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options that pick the ONNX model: --model FILE, or what to export (and cache) on first use."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=Path, help="an exported gradcam_fast .onnx file")
    add_network_options(group)
    add_precision_options(group)
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument(
        "--tensorrt",
        action="store_true",
        help="run on ONNX Runtime's TensorRT provider (CUDA; needs onnxruntime-gpu and "
        "TensorRT; the first run per batch size builds an engine, cached on disk)",
    )


def pick(args: argparse.Namespace, *names: str) -> dict:
    """The options `names` as keyword arguments of the same names (the library's)."""
    return {name: getattr(args, name) for name in names}


def network_options(args: argparse.Namespace) -> dict:
    """The network options (and the int8 ones, `precision.precision_kwargs`) as keyword
    arguments of `export_onnx` / `model_cache.cached_model`."""
    network = pick(args, "arch", "weights", "seed", "target_layer", "image_size")
    network["image_size"] = network["image_size"] or ARCH_TABLE[args.arch][2]
    return network | precision_kwargs(args)


def session_options(args: argparse.Namespace) -> dict:
    """The model options as keyword arguments of `model_cache.open_session` (the backend and
    precision, resolved for this CPU, among its `session_options`)."""
    return pick(args, "model", "device", "tensorrt") | {"session_options": session_kwargs(args)}


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


def usage_error(message: str) -> int:
    """Print a usage error as one line; returns EXIT_ERROR."""
    print(f"gradcam-fast: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def finish(total: int, failed: int, seconds: float, where: str, quiet: bool) -> int:
    """The summary line of a run on stderr (unless `quiet`): how many images, how fast, where
    the results are. Returns the exit status: EXIT_SOME_FAILED when a file failed."""
    if not quiet:
        print(
            f"gradcam-fast: {total - failed} image(s) explained, {failed} failed, "
            f"{total / seconds:.1f} images/s; {where}",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else EXIT_OK
