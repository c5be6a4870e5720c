"""Command-line options for int8 models: `export --int8 --calibration DIR` and, for commands that
export and cache a model on first use (explain, bench, explain-dataset),
`--precision int8 --calibration DIR`. Kept apart from quantize.py so that building the parser
imports neither torch nor onnx."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_precision_options", "precision_kwargs"]

_METHODS = ("minmax", "percentile", "entropy")  # quantize.CALIBRATION_METHODS (a test checks)


def add_precision_options(group, export: bool = False) -> None:
    """Add --int8 (export) or --precision (other commands), with --calibration and
    --calibration-method, to a parser or argument group."""
    if export:
        group.add_argument(
            "--int8",
            action="store_true",
            help="int8 body (static per-channel quantization, ONNX Runtime QOperator format) "
            "calibrated on --calibration; head and its backward stay float32 (CPU)",
        )
    else:
        group.add_argument(
            "--precision",
            choices=("float32", "int8"),
            default="float32",
            help="the cached model's precision; int8 needs --calibration (about 3x faster "
            "on CPUs with VNNI; maps correlate about 0.99 with float32's)",
        )
    group.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="folder of at least 8 photos like those to explain, for int8 activation ranges "
        "(the cache key includes a hash of its files)",
    )
    group.add_argument(
        "--calibration-method", choices=_METHODS, default="minmax", help="(int8, default minmax)"
    )


def precision_kwargs(args: argparse.Namespace) -> dict:
    """export_onnx / cached_model keyword arguments for the parsed options (empty for float32);
    refuses --calibration without int8 and int8 without --calibration."""
    int8 = getattr(args, "int8", False) or getattr(args, "precision", "float32") == "int8"
    if not int8:
        if args.calibration is not None:
            raise ValueError(
                "--calibration is for int8 models: add --int8 (export) or --precision int8"
            )
        return {}
    if args.calibration is None:
        raise ValueError(
            "int8 needs --calibration DIR: a folder of at least 8 photos like those "
            "the model will explain"
        )
    if getattr(args, "model", None) is not None:
        raise ValueError(
            "--precision int8 exports and caches a model: leave out --model "
            "(an exported int8 file runs as it is with --model)"
        )
    return {
        "quantize": "int8",
        "calibration": args.calibration,
        "calibration_method": args.calibration_method,
    }
