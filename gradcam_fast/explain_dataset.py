"""`gradcam-fast explain-dataset SOURCE... --out DEST`: Grad-CAM for whole datasets on Ray Data.

The driver exports (or finds) the model once, then Ray Data reads the files as bytes and a pool of
actors, one GradCAMSession each, decodes and explains them in batches; DEST gets Parquet, one row
per file (see `gradcam_fast.distributed.ROW_SCHEMA`). Without an address it starts a local Ray
sized to this machine; RAY_ADDRESS or --address sends the job to a cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .cli import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_class_options,
    add_model_options,
    fraction,
    non_negative_float,
    positive,
)

__all__ = ["add_parser"]

INSTALL_HINT = 'explain-dataset needs Ray Data: pip install "gradcam_fast[ray]"'


def _is_uri(text: str) -> bool:
    return "://" in text


def _sources(items: list[str], out: str) -> tuple[list[str], tuple[str, ...] | None]:
    """What Ray reads, and the extensions it keeps. Local files, folders and globs become the
    image files in them as `explain` finds them (the output folder excluded), all read; URIs
    (s3://, local://, ...) pass as they are, and only files with an image extension are read."""
    from .explain import collect_inputs
    from .images import IMAGE_EXTENSIONS

    if any(_is_uri(item) for item in items):
        return list(items), tuple(IMAGE_EXTENSIONS)
    found = collect_inputs(items, exclude=None if _is_uri(out) else Path(out))
    missing = [str(p) for p in found if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file, folder or glob match: {', '.join(missing)}")
    if not found:
        raise FileNotFoundError(f"no image files found in {' '.join(items)}")
    return [str(p.resolve()) for p in found], None


def _check_dest(out: str) -> None:
    if _is_uri(out):
        return
    path = Path(out)
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise FileExistsError(
            f"--out {out} already exists and is not empty; Parquet files would be added to what "
            "is there: choose a new folder or delete it"
        )


def _device(args: argparse.Namespace) -> str | None:
    """The actors' device: None (CUDA where Ray gave the actor a GPU), or "cpu"."""
    if args.tensorrt and not args.num_gpus_per_actor:
        raise ValueError("--tensorrt runs on GPU actors: add --num-gpus-per-actor (e.g. 1)")
    if args.device == "cpu":
        return "cpu"
    if args.device.startswith("cuda") and not args.num_gpus_per_actor:
        raise ValueError(
            f"--device {args.device}: actors get a GPU only with --num-gpus-per-actor (e.g. 1); "
            "Ray then picks which GPU each actor uses"
        )
    return None


def _run(args: argparse.Namespace) -> int:
    try:
        import pyarrow.parquet as pq
        import ray

        from .distributed import explain_dataset, read_metadata
    except ImportError as exc:
        print(f"gradcam-fast: error: {INSTALL_HINT} ({exc})", file=sys.stderr)
        return EXIT_ERROR
    from .cache import cached_model
    from .explain import resolve_classes
    from .precision_options import precision_kwargs
    from .visualize import colormap_lut

    colormap_lut(args.colormap)  # an unknown colormap fails here, not in every actor
    if args.classes and args.top_k is not None:
        raise ValueError("give either --class or --top-k, not both")
    device = _device(args)
    _check_dest(args.out)
    source, extensions = _sources(args.source, args.out)
    wanted = len(args.classes) if args.classes else args.top_k
    model_path = args.model or cached_model(
        args.arch,
        args.weights,
        target_layer=args.target_layer,
        image_size=args.image_size,
        num_targets=wanted or 1,
        seed=args.seed,
        gradients=False,  # the rows hold Grad-CAM maps: channel weights are enough
        **precision_kwargs(args),
    )
    meta = read_metadata(model_path)
    if wanted is not None and wanted != meta.num_targets:
        what = f"{wanted} classes (--class)" if args.classes else f"--top-k {wanted}"
        raise ValueError(
            f"{model_path} computes {meta.num_targets} map(s) per image, not the {what} asked "
            f"for: export a model with -k {wanted}, or leave out --model to have one made"
        )
    classes = None
    if args.classes:
        classes = resolve_classes(args.classes, meta.categories, meta.num_classes)

    started_ray = not ray.is_initialized()
    if started_ray:  # address None: RAY_ADDRESS, else a running local cluster, else a new one
        ray.init(address=args.address)
    try:
        start = time.perf_counter()
        dataset = explain_dataset(
            source,
            Path(model_path).resolve(),
            actors=args.actors,
            batch_size=args.batch_size,
            cpus_per_actor=args.cpus_per_actor,
            gpus_per_actor=args.num_gpus_per_actor,
            classes=classes,
            crop=not args.no_crop,
            overlays_dir=None if args.overlays is None else args.overlays.resolve(),
            colormap=args.colormap,
            alpha=args.alpha,
            device=device,
            extensions=extensions,
            tensorrt=args.tensorrt,
        )
        dataset.write_parquet(args.out, ray_remote_args={"num_cpus": 0})
        elapsed = time.perf_counter() - start
    finally:
        if started_ray:
            ray.shutdown()
    readable = args.out.removeprefix("local://")  # written on the head node, where we run
    errors = pq.read_table(readable, columns=["error"]).column("error")
    total = len(errors)
    failed = total - errors.null_count
    if not args.quiet:
        print(
            f"gradcam-fast: {total - failed} image(s) explained, {failed} failed, "
            f"{total / elapsed:.1f} images/s; Parquet in {args.out}",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def add_parser(subparsers) -> None:
    """Add the `explain-dataset` subcommand."""
    from .visualize import COLORMAPS

    p = subparsers.add_parser(
        "explain-dataset",
        help="Grad-CAM for whole datasets on Ray Data (local or a cluster), into Parquet",
        description="Explain every image of SOURCE (folders, files, or URIs Ray can read such as "
        "s3://bucket/prefix) with a pool of Ray actors, one model session each, and write "
        "Parquet to DEST: one row per file with its top-5 predictions, the explained classes, "
        "the low-resolution maps, and the error for files that could not be read. Without "
        "--address or RAY_ADDRESS, a local Ray is started on this machine.",
        epilog="exit status: 0 every file explained; 1 some files failed (their rows carry the "
        "error); 2 usage, model or cluster error. " + INSTALL_HINT + ".",
    )
    p.add_argument("source", nargs="+", metavar="SOURCE", help="image folders, files or URIs")
    p.add_argument(
        "-o",
        "--out",
        required=True,
        metavar="DEST",
        help="output folder (or URI) for Parquet files",
    )
    add_class_options(p)
    pre = p.add_argument_group("preprocessing and outputs")
    pre.add_argument("--no-crop", action="store_true", help="resize to S x S without a crop")
    pre.add_argument(
        "--overlays",
        type=Path,
        metavar="DIR",
        help="also write an overlay PNG per image and class into DIR (on a cluster: a folder "
        "every node can write to)",
    )
    pre.add_argument("--colormap", default="jet", help=f"overlay colors: {', '.join(COLORMAPS)}")
    pre.add_argument("--alpha", type=fraction, default=0.5, help="heatmap weight (0..1)")
    run = p.add_argument_group("Ray")
    run.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray on this machine)",
    )
    run.add_argument("--actors", type=positive, default=1, help="model sessions running at once")
    run.add_argument("--batch-size", type=positive, default=16, help="images per session call")
    run.add_argument(
        "--cpus-per-actor",
        type=float,
        help="CPUs each actor reserves and runs threads on (default: an even share of the "
        "cluster's CPUs, at most one node's)",
    )
    run.add_argument(
        "--num-gpus-per-actor",
        type=non_negative_float,
        default=0.0,
        help="GPUs each actor reserves; actors with a GPU run on CUDA (needs onnxruntime-gpu)",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    add_model_options(p)
    p.set_defaults(func=_run)
