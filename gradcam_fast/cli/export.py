"""`gradcam-fast export`: `export_onnx` on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..model.catalog import EXPORTABLE_METHODS
from .options import EXIT_OK, add_network_options, network_options, pick
from .precision import add_precision_options

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    from ..export.onnx_export import export_onnx

    network = network_options(args)
    path = export_onnx(
        network.pop("arch"),
        args.out,
        validate=not args.no_validate,
        **network,
        **pick(args, "num_targets", "opset", "raw_pixels", "external_data", "maps", "method"),
        **pick(args, "channel_weights_only"),
    )
    print(path)
    return EXIT_OK


HELP = "export a CNN's Grad-CAM graph to ONNX"
DESCRIPTION = """\
Export the Grad-CAM graph of a CNN to ONNX, validated against the eager reference in ONNX
Runtime unless --no-validate.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `gradcam-fast export`."""
    p.add_argument("-o", "--out", type=Path, required=True, help="output .onnx path")
    add_network_options(p)
    add_precision_options(p, export=True)
    p.add_argument(
        "--num-targets",
        "-k",
        type=int,
        default=1,
        help="K, the target classes (maps) each call computes per image (default 1)",
    )
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-validate", action="store_true", help="skip the check against eager")
    p.add_argument(
        "--channel-weights-only",
        action="store_true",
        help="the channel-weights model (export_onnx's channel_weights_only=True): outputs "
        "Grad-CAM's channel weights instead of the gradients, skipping the first Linear's VJP "
        "(faster at small batches); serves --method gradcam only",
    )
    p.add_argument(
        "--external-data",
        action="store_true",
        help="weights in OUT.data beside the model (memory-mapped with low_memory sessions)",
    )
    p.add_argument(
        "--raw-pixels",
        action="store_true",
        help="take uint8 [B,S,S,3] decoded RGB pixels as input; normalize inside the model",
    )
    p.add_argument(
        "--maps",
        action="store_true",
        help="also output the maps, cams [B,K,S,S] in [0,1] and cams_lowres [B,K,h,w], computed "
        "in the graph (for services without Python; docs/embedding.md)",
    )
    p.add_argument(
        "--method",
        choices=EXPORTABLE_METHODS,
        help="CAM method of the --maps (default gradcam)",
    )
