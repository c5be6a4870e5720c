"""`gradcam-fast explain-dataset SOURCE... --out DEST`: `services.ray_data.explain_dataset` on
the command line: Grad-CAM for whole datasets on Ray Data.

The driver exports (or finds) the model once, then Ray Data reads the files as bytes and a pool of
actors, one GradCAMSession each, decodes and explains them in batches; DEST gets Parquet, one row
per file (see `gradcam_fast.services.ray_data.ROW_SCHEMA`). Without an address it starts a local
Ray sized to this machine; RAY_ADDRESS or --address sends the job to a cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..io.colormaps import COLORMAPS
from .options import (
    add_class_options,
    add_model_options,
    finish,
    fraction,
    network_options,
    non_negative_float,
    pick,
    positive,
    usage_error,
)
from .precision import settled_session_kwargs

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]

INSTALL_HINT = 'explain-dataset needs Ray Data: pip install "gradcam_fast[ray]"'


def _check_dest(out: str) -> None:
    from ..io.discover import is_uri

    if is_uri(out):
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


def run(args: argparse.Namespace) -> int:
    try:
        import pyarrow.parquet as pq
        import ray

        from ..services.ray_data import explain_dataset, read_metadata
    except ImportError as exc:
        return usage_error(f"{INSTALL_HINT} ({exc})")
    from ..app.classes import check_class_request, maps_to_write, resolve_classes
    from ..app.model_cache import cached_model
    from ..io.colormaps import colormap_lut
    from ..io.discover import dataset_sources

    colormap_lut(args.colormap)  # an unknown colormap fails here, not in every actor
    check_class_request(args.classes, args.top_k)
    device = _device(args)
    _check_dest(args.out)
    source, extensions = dataset_sources(args.source, args.out)
    wanted = len(args.classes) if args.classes else args.top_k
    model_path = args.model or cached_model(
        **network_options(args),
        num_targets=wanted or 1,
        channel_weights_only=True,  # the rows hold Grad-CAM maps: the channel-weights model serves
    )
    meta = read_metadata(model_path)
    maps_to_write(model_path, meta.num_targets, args.classes, args.top_k)
    classes = None
    if args.classes:
        classes = resolve_classes(args.classes, meta.categories, meta.num_classes)

    options, line = settled_session_kwargs(args, model_path)
    if not args.quiet:
        print(line, file=sys.stderr)
    started_ray = not ray.is_initialized()
    if started_ray:  # address None: RAY_ADDRESS, else a running local cluster, else a new one
        ray.init(address=args.address)
    try:
        start = time.perf_counter()
        dataset = explain_dataset(
            source,
            Path(model_path).resolve(),
            gpus_per_actor=args.num_gpus_per_actor,
            classes=classes,
            crop=not args.no_crop,
            overlays_dir=None if args.overlays is None else args.overlays.resolve(),
            device=device,
            extensions=extensions,
            **pick(args, "actors", "batch_size", "cpus_per_actor", "top_k", "colormap", "alpha"),
            tensorrt=args.tensorrt,
            session_options=options,
        )
        dataset.write_parquet(args.out, ray_remote_args={"num_cpus": 0})
        elapsed = time.perf_counter() - start
    finally:
        if started_ray:
            ray.shutdown()
    readable = args.out.removeprefix("local://")  # written on the head node, where we run
    errors = pq.read_table(readable, columns=["error"]).column("error")
    failed = len(errors) - errors.null_count
    return finish(len(errors), failed, elapsed, f"Parquet in {args.out}", args.quiet)


HELP = "Grad-CAM for whole datasets on Ray Data (local or a cluster), into Parquet"
DESCRIPTION = """\
Explain every image of SOURCE (folders, files, or URIs Ray can read such as s3://bucket/prefix)
with a pool of Ray actors, one model session each, and write Parquet to DEST: one row per file
with its top-5 predictions, the explained classes, the low-resolution maps, and the error for
files that could not be read. Without --address or RAY_ADDRESS, a local Ray is started on this
machine.
"""
EPILOG = (
    "exit status: 0 every file explained; 1 some files failed (their rows carry the "
    "error); 2 usage, model or cluster error. " + INSTALL_HINT + "."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `gradcam-fast explain-dataset`."""
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
        metavar="DIR",
        type=Path,
        help="also write an overlay PNG per image and class into DIR (on a cluster: a folder "
        "every node can write to)",
    )
    pre.add_argument("--colormap", default="jet", help=f"overlay colors: {', '.join(COLORMAPS)}")
    pre.add_argument("--alpha", type=fraction, default=0.5, help="heatmap weight (0..1)")
    ray_group = p.add_argument_group("Ray")
    ray_group.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray on this machine)",
    )
    ray_group.add_argument(
        "--actors", type=positive, default=1, help="model sessions running at once"
    )
    ray_group.add_argument(
        "--batch-size", type=positive, default=16, help="images per session call"
    )
    ray_group.add_argument(
        "--cpus-per-actor",
        type=float,
        help="CPUs each actor reserves and runs threads on (default: an even share of the "
        "cluster's CPUs, at most one node's)",
    )
    ray_group.add_argument(
        "--num-gpus-per-actor",
        type=non_negative_float,
        default=0.0,
        help="GPUs each actor reserves; actors with a GPU run on CUDA (needs onnxruntime-gpu)",
    )
    ray_group.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    add_model_options(p)
