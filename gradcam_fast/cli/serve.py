"""`gradcam-fast serve`: the Grad-CAM HTTP API on Ray Serve, in the foreground until Ctrl-C/SIGTERM.

The model is resolved (and exported into the cache if needed) before Ray starts; the replicas of
`gradcam_fast.services.ray_serve.app` then answer on --host:--port. On Ctrl-C or SIGTERM the
application is deleted and, when this command started them, Ray Serve and Ray are shut down.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from ..services.serve_ingress import INGRESS_CHOICES, exposed_ports_notice, use_ingress
from . import options, precision
from .options import non_negative_float, positive

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]

APP_NAME = "gradcam"
INSTALL_HINT = 'needs Ray Serve: pip install -e ".[serve]" (or "ray[serve]>=2.51")'


def run(args: argparse.Namespace) -> int:
    try:
        import ray
        from ray import serve

        from ..services.ray_serve import app
    except ImportError:
        print(f"gradcam-fast: error: serve {INSTALL_HINT}", file=sys.stderr)
        return options.EXIT_ERROR
    from ..app.model_cache import cached_model

    if args.address is not None and args.ingress != "auto":
        raise ValueError(
            f"--ingress {args.ingress} applies to a Ray this command starts; the cluster at "
            f"{args.address} keeps the ingress it was started with (start it with "
            "RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_ENABLE_DIRECT_INGRESS=1 for HAProxy)"
        )
    started_ray = not ray.is_initialized()
    ingress = "the cluster's"
    if started_ray and args.address is None:
        ingress = use_ingress(args.ingress)  # before ray.init: Ray's processes inherit it
    if args.model is not None and not args.model.is_file():
        raise FileNotFoundError(f"--model {args.model}: no such file")
    model = args.model or cached_model(
        **options.network_options(args),
        num_targets=args.num_targets,
        channel_weights_only=args.channel_weights_only,
    )
    session_options, line = precision.settled_session_kwargs(args, model)
    print(line, file=sys.stderr)
    if started_ray:  # without --address a Ray of its own ("local"), with the ingress set above
        ray.init(address=args.address or "local")
    cores = int(ray.available_resources().get("CPU", 1))
    cpus = args.cpus_per_replica or max(1.0, float(cores // args.replicas))
    stop = threading.Event()
    handlers = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(
            app(
                str(Path(model).resolve()),
                replicas=args.replicas,
                cpus_per_replica=cpus,
                gpus_per_replica=args.num_gpus_per_replica,
                max_batch_size=args.max_batch_size,
                batch_wait_ms=args.batch_wait_ms,
                max_body_bytes=int(args.max_body_mb * (1 << 20)),
                device=args.device,
                tensorrt=args.tensorrt,
                session_options=session_options,
                env={"OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")},
            ),
            name=APP_NAME,
            route_prefix=args.route_prefix,
        )
        url = f"http://{args.host}:{args.port}{args.route_prefix.rstrip('/')}"
        print(
            f"gradcam-fast: serving {model} with {args.replicas} replica(s) at {url}/explain "
            f"(health: {url}/healthz, ingress: {ingress}); Ctrl-C or SIGTERM stops",
            file=sys.stderr,
            flush=True,
        )
        if ingress == "haproxy":
            print(f"gradcam-fast: note: {exposed_ports_notice()}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in handlers.items():  # a second Ctrl-C interrupts the shutdown
            signal.signal(sig, handler)
        print("gradcam-fast: shutting down", file=sys.stderr, flush=True)
        if started_ray:
            serve.shutdown()
            ray.shutdown()
        else:  # a cluster this command did not start: remove only this application
            serve.delete(APP_NAME)
    print("gradcam-fast: stopped", file=sys.stderr)
    return options.EXIT_OK


HELP = "serve Grad-CAM over HTTP on Ray Serve (batched, replicated)"
DESCRIPTION = """\
Serve Grad-CAM over HTTP on Ray Serve: POST an image file to /explain, get the top-5 predictions
and the low-resolution maps as JSON (docs/serving.md). Runs in the foreground until Ctrl-C or
SIGTERM. Without --address or RAY_ADDRESS, a local Ray is started on this machine.
"""
EPILOG = (
    f"exit status: 0 after a clean shutdown; 2 usage, model or cluster error. It {INSTALL_HINT}."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `gradcam-fast serve`."""
    net = p.add_argument_group("HTTP")
    net.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    net.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    net.add_argument("--route-prefix", default="/", help="URL prefix of the API (default /)")
    net.add_argument(
        "--ingress",
        choices=INGRESS_CHOICES,
        default="auto",
        help="what forwards requests to the replicas in a Ray this command starts: HAProxy "
        "(each replica answers HTTP itself) or Ray Serve's Python proxy (about 8 ms more a "
        "request on 2 cores). auto: HAProxy where ray[serve] installed it (Linux), else the "
        "proxy (default auto)",
    )
    net.add_argument(
        "--max-body-mb",
        type=float,
        default=32.0,
        help="largest request body in MiB; larger ones get a 413 (default 32)",
    )
    run = p.add_argument_group("replicas and batching")
    run.add_argument("--replicas", type=positive, default=1, help="model sessions (default 1)")
    run.add_argument(
        "--max-batch-size",
        type=positive,
        default=8,
        help="most concurrent requests one session call takes (default 8; 1 = no batching)",
    )
    run.add_argument(
        "--batch-wait-ms",
        type=non_negative_float,
        default=200.0,
        help="the longest a batch waits for the requests it expects: as many as the last "
        "batch held plus those that came meanwhile; never more than a quarter of that "
        "batch's estimated run time (default 200)",
    )
    run.add_argument(
        "--cpus-per-replica",
        type=float,
        help="CPUs each replica reserves and runs threads on (default: an even share)",
    )
    run.add_argument(
        "--num-gpus-per-replica",
        type=non_negative_float,
        default=0.0,
        help="GPUs each replica reserves; replicas with a GPU run on CUDA",
    )
    run.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray on this machine)",
    )
    options.add_model_options(p)
    model = p.add_argument_group("model to export (without --model)")
    model.add_argument(
        "-k",
        "--num-targets",
        type=positive,
        default=1,
        help="K, the target classes (maps) the model computes per image: the largest top_k or "
        "number of classes a request may ask for (default 1)",
    )
    model.add_argument(
        "--channel-weights-only",
        action="store_true",
        help="the channel-weights model (channel weights instead of gradients: Grad-CAM only, "
        "faster at small batches); requests for other methods get a 400",
    )
