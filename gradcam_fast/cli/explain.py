"""`gradcam-fast explain IMAGE... --out DIR`: `app.explain.explain` on files, folders and globs.

Exit status: 0 every file explained, 1 some failed (see results.jsonl), 2 nothing ran.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ..io.colormaps import COLORMAPS
from ..model.catalog import METHOD_NAMES
from .options import (
    add_class_options,
    add_model_options,
    finish,
    fraction,
    network_options,
    non_negative_int,
    pick,
    positive,
    session_options,
    usage_error,
)
from .precision import choice_line

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    from ..app import explain as pipeline  # looked up here: tests replace pipeline.explain
    from ..app.classes import check_class_request, maps_to_write, resolve_classes
    from ..app.model_cache import open_session
    from ..io.colormaps import colormap_lut
    from ..io.discover import collect_inputs

    try:
        colormap_lut(args.colormap)
        check_class_request(args.classes, args.top_k)
    except ValueError as exc:
        return usage_error(str(exc))
    paths = collect_inputs(args.images, exclude=args.out)
    if not paths:
        return usage_error(f"no image files found in {' '.join(args.images)}")
    if args.out.exists() and not args.out.is_dir():
        return usage_error(f"--out {args.out} is a file; give a folder for the outputs")
    try:  # before the (possibly slow) model export: fail early on an unusable --out
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return usage_error(f"--out {args.out}: cannot create the folder ({exc.strerror or exc})")
    try:
        tempfile.TemporaryFile(dir=args.out).close()
    except OSError as exc:
        return usage_error(
            f"--out {args.out}: cannot write into the folder ({exc.strerror or exc})"
        )
    wanted = len(args.classes) if args.classes else args.top_k
    # Grad-CAM needs only the channel weights: the cached model for it skips the first Linear's
    # backward (benchmarks/RESULTS.md); the other methods need the gradients.
    session = open_session(
        **session_options(args),
        **network_options(args),
        num_targets=wanted or 1,
        channel_weights_only=args.method == "gradcam",
    )
    meta = session.metadata
    classes = None
    if args.classes:
        classes = resolve_classes(args.classes, meta.categories, meta.num_classes)
    try:
        maps_to_write(session.path, meta.num_targets, args.classes, args.top_k)
    except ValueError as exc:
        return usage_error(str(exc))
    if not args.quiet:  # after the usage checks: a usage error stays one line
        print(choice_line(args, session), file=sys.stderr)
    start = time.perf_counter()
    records = pipeline.explain(
        paths,
        session,
        args.out,
        classes=classes,
        crop=not args.no_crop,
        progress=not args.quiet,
        verbose=getattr(args, "verbose", False),
        **pick(args, "top_k", "batch_size", "workers", "full_image", "colormap", "alpha"),
        **pick(args, "save_maps", "method", "aug_smooth"),
    )
    failed = sum("error" in r for r in records)
    where = f"results in {args.out / 'results.jsonl'}, gallery in {args.out / 'index.html'}"
    return finish(len(records), failed, time.perf_counter() - start, where, args.quiet)


HELP = "Grad-CAM overlays for image files and folders"
DESCRIPTION = """\
Grad-CAM overlays for image files, folders (recursive) and glob patterns. Writes an overlay PNG
per image and class, results.jsonl (one line per input) and index.html (a gallery) into --out.
"""
EPILOG = """\
exit status: 0 every file explained; 1 some files failed (see results.jsonl); 2 usage or model
error, nothing explained.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `gradcam-fast explain`."""
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    add_class_options(p)
    pre = p.add_argument_group("preprocessing and outputs")
    pre.add_argument(
        "--no-crop",
        action="store_true",
        help="resize the whole image to S x S instead of resize + center crop",
    )
    pre.add_argument(
        "--full-image",
        action="store_true",
        help="draw the heatmap on the original image instead of on what the model saw",
    )
    pre.add_argument(
        "--colormap",
        default="jet",
        help=f"heatmap colors: {', '.join(COLORMAPS)} (or matplotlib's, if installed)",
    )
    pre.add_argument(
        "--alpha", type=fraction, default=0.5, help="heatmap weight in the blend (0..1)"
    )
    pre.add_argument(
        "--save-maps", action="store_true", help="also save each map as .npy (float32, S x S)"
    )
    pre.add_argument(
        "--method",
        default="gradcam",
        choices=list(METHOD_NAMES),
        help="CAM method computed from the same activations and gradients (default gradcam)",
    )
    pre.add_argument(
        "--aug-smooth",
        action="store_true",
        help="average maps over a flip and two intensity factors (6x the images, one batch)",
    )
    run_group = p.add_argument_group("running")
    run_group.add_argument(
        "--batch-size", type=positive, default=16, help="images per session call (default 16)"
    )
    run_group.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    run_group.add_argument(
        "--workers",
        type=non_negative_int,
        default=4,
        help="threads decoding and writing alongside the model (default 4); 0 = no overlap",
    )
    add_model_options(p)
