"""Online Grad-CAM on Ray Serve: one `GradCAMSession` per replica, concurrent requests batched.

`GradCAMDeployment` answers HTTP (docs/serving.md): `GET /healthz`, `GET /stats` and
`POST /explain` with an image file as the body. A request is checked (query, body size) on the
event loop and decoded in a thread pool; decoded requests are coalesced by `@serve.batch` into
one session call per CAM method, run in the replica's one inference thread, so the loop keeps
reading and decoding the next requests meanwhile.

Batches adapt to the load: the next batch expects as many requests as the last one held plus
those that arrived while it ran (at most `max_batch_size`), starts as soon as that many are in,
and waits for the rest at most `batch_wait_ms` or a quarter of its estimated run time
(whichever is shorter: a dropping load costs a quarter of a batch, once). A lone client never
waits; the clients of a full batch, sending again as their answers come back, find the next
batch waiting for all of them instead of starting with the first to return. A gate before the
batch queue (batch_gate.py) lets the expected requests in, oldest first, once the last has run.

Bad input gets a 4xx with `{"error": ...}` naming the problem; anything else a 500, logged with
its traceback in the replica's log.

Bind it into your own application (`GradCAMDeployment.options(...).bind(model, ...)`) or build the
one `gradcam-fast serve` runs with `app(...)`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

try:
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        'gradcam_fast.services.ray_serve needs Ray Serve: pip install "gradcam_fast[serve]" '
        '(or pip install "ray[serve]>=2.51")'
    ) from exc

import numpy as np
import torch

from ..app.steps import Decoded, decode, model_input, preprocessing_of
from ..check.finite import NONFINITE, NonFiniteMapsError
from .batch_gate import BatchGate
from .serve_query import ExplainQuery, HTTPError, answer_predictions, parse_query, require_method

__all__ = [
    "DEFAULT_BATCH_WAIT_MS",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_BODY_BYTES",
    "GradCAMDeployment",
    "app",
]

# Replica logs (Ray Serve collects the "ray.serve" logger into each replica's log file).
log = logging.getLogger("ray.serve")

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_BATCH_WAIT_MS = 200.0  # the most a batch waits for the requests it expects
WAIT_SHARE = 0.25  # ... and at most this share of the expected batch's estimated run time
DEFAULT_MAX_BODY_BYTES = 32 << 20  # 32 MiB: a large photo; decoding is bounded by PIL's limit
SessionFactory = Callable[[], Any]  # a zero-argument callable returning a GradCAMSession


@dataclass
class _Job:
    """One decoded request on its way through the batch."""

    decoded: Decoded  # the model's input, and its view (overlays are drawn on it)
    query: ExplainQuery


@dataclass
class _Outcome:
    """One image's part of a batch result, on the CPU."""

    probabilities: torch.Tensor  # [num_classes]
    explained: list[int]
    cams_lowres: np.ndarray  # [maps, h, w]
    cams: np.ndarray | None  # [maps, S, S] when overlays are asked for
    error: str | None = None  # the model's outputs for this image were not finite


def _assigned_cpus() -> float:
    """CPUs Ray reserved for this replica (1 outside Ray)."""
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))
    except Exception:
        return 1.0


def _replica_id() -> str:
    try:
        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a replica
        return "local"


@serve.deployment(name="GradCAM", max_ongoing_requests=32, ray_actor_options={"num_cpus": 1})
class GradCAMDeployment:
    """A Ray Serve replica holding one Grad-CAM session, answering docs/serving.md's HTTP API.

    `model`: an exported gradcam_fast .onnx file (run by ONNX Runtime on `device`, with
    `intra_op_threads`, default the CPUs Ray reserved for the replica), or a zero-argument
    callable returning a `GradCAMSession` (e.g. one built by `GradCAMSession.from_model` for the
    torch backend on CUDA), called once in each replica. `max_batch_size`: the largest batch;
    `batch_wait_ms`: the longest a batch waits for the requests it expects (see the module
    note; keep `max_ongoing_requests` at least `max_batch_size`). `max_body_bytes`: larger
    bodies get a 413. `decode_threads`: threads decoding images and encoding overlays. `crop`,
    `colormap`, `alpha`: as in `gradcam-fast explain`. `session_options`: more GradCAMSession
    keywords (backend="openvino", precision="bfloat16", ...)."""

    def __init__(
        self,
        model: str | os.PathLike | SessionFactory,
        *,
        device: str = "auto",
        intra_op_threads: int | None = None,
        tensorrt: bool = False,
        session_options: dict | None = None,
        max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
        batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        decode_threads: int = 2,
        crop: bool = True,
        colormap: str = "jet",
        alpha: float = 0.5,
    ):
        from ..io.colormaps import colormap_lut
        from ..runtime.session import GradCAMSession

        if max_batch_size < 1 or batch_wait_ms < 0 or max_body_bytes < 1 or decode_threads < 1:
            raise ValueError(
                "max_batch_size, max_body_bytes and decode_threads must be at least 1 and "
                f"batch_wait_ms at least 0; got {max_batch_size}, {max_body_bytes}, "
                f"{decode_threads} and {batch_wait_ms}"
            )
        colormap_lut(colormap)  # an unknown colormap fails at start, not in every request
        threads = intra_op_threads or max(1, int(_assigned_cpus()))
        torch.set_num_threads(threads)  # post-processing stays within the replica's CPUs
        if callable(model):
            self.session = model()
        else:
            opts = {"tensorrt": tensorrt, **(session_options or {})}
            self.session = GradCAMSession(model, device=device, intra_op_threads=threads, **opts)
        meta = self.session.metadata
        preprocessing_of(meta)  # bad preprocessing metadata fails at start, not in every request
        self.names = tuple(meta.categories)
        self.raw_pixels = meta.input_format == "uint8_nhwc"
        self.max_body_bytes = max_body_bytes
        self.crop, self.colormap, self.alpha = crop, colormap, alpha
        self.max_batch_size, self.batch_wait_ms = max_batch_size, batch_wait_ms
        self.expected_batch_size = 1  # what the next batch waits for: see _expect_next
        self.batch_wait_s = batch_wait_ms / 1000.0
        self._explain_batch.set_max_batch_size(1)
        self._explain_batch.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)
        self._pending = 0  # requests read but not yet in a batch (decoding, or at the gate)
        self._decode_pool = ThreadPoolExecutor(decode_threads, thread_name_prefix="gradcam-decode")
        # One inference thread: batches run one after another while the loop decodes the next.
        self._infer_pool = ThreadPoolExecutor(1, thread_name_prefix="gradcam-infer")
        self._lock = threading.Lock()
        self._gate = BatchGate()  # closed while a batch runs, then open to the next one's
        self._counts: Counter[str] = Counter()
        self._batch_sizes: Counter[int] = Counter()
        self.replica = _replica_id()
        log.info("gradcam replica %s ready: %r", self.replica, self.session)

    # -------------------------------------------------------------------------------- routing

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        root = request.scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        path = "/" + path.strip("/")
        try:
            if path == "/explain":
                require_method(request.method, "POST")
                return await self._explain(request)
            if path == "/healthz":
                require_method(request.method, "GET")
                return JSONResponse({"status": "ok", "replica": self.replica})
            if path == "/stats":
                require_method(request.method, "GET")
                return JSONResponse(self.stats())
            raise HTTPError(404, f"no route {path}: use POST /explain, GET /healthz, GET /stats")
        except HTTPError as exc:
            self._count("rejected")
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except Exception as exc:  # a bug or a resource problem: logged with its cause
            self._count("failed")
            log.exception("gradcam replica %s: %s %s failed", self.replica, request.method, path)
            return JSONResponse(
                {"error": f"internal server error ({type(exc).__name__}); see the server log"},
                status_code=500,
            )

    def stats(self) -> dict[str, Any]:
        """This replica's counters: requests explained, rejected (4xx) and failed (500), how
        many session calls ran at each batch size, and the size the next batch expects."""
        with self._lock:
            return {
                "replica": self.replica,
                "max_batch_size": self.max_batch_size,
                "batch_wait_ms": self.batch_wait_ms,
                "expected_batch_size": self.expected_batch_size,
                "next_batch_wait_ms": round(self.batch_wait_s * 1000.0, 3),
                "explained": self._counts["explained"],
                "rejected": self._counts["rejected"],
                "failed": self._counts["failed"],
                "batch_sizes": {str(k): v for k, v in sorted(self._batch_sizes.items())},
                "model": repr(self.session),
            }

    def _count(self, key: str, batch_size: int | None = None) -> None:
        with self._lock:
            self._counts[key] += 1
            if batch_size is not None:
                self._batch_sizes[batch_size] += 1

    # -------------------------------------------------------------------------------- /explain

    async def _explain(self, request: Request) -> Response:
        query = parse_query(request.query_params, self.session.metadata)
        data = await self._read_body(request)
        loop = asyncio.get_running_loop()
        self._pending += 1
        try:
            decoded = await loop.run_in_executor(self._decode_pool, self._decode, data)
            await self._gate.enter()  # while a batch runs, requests gather for the next one
        finally:
            self._pending -= 1
        outcome: _Outcome = await self._explain_batch(_Job(decoded, query))
        if outcome.error is not None:
            raise RuntimeError(outcome.error)
        body = {
            "predictions": answer_predictions(outcome.probabilities, self.names),
            "explained": outcome.explained,
            "cams_lowres": outcome.cams_lowres.tolist(),
        }
        if query.overlay:
            body["overlay_png_base64"] = await loop.run_in_executor(
                self._decode_pool, self._overlays, decoded.view, outcome.cams
            )
        self._count("explained")
        return Response(json.dumps(body), media_type="application/json")

    async def _read_body(self, request: Request) -> bytes:
        """The request body, refused (413) as soon as it is known to exceed the limit."""
        limit = self.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                raise HTTPError(400, f"Content-Length {declared!r} is not a number of bytes")
            if int(declared) > limit:
                raise HTTPError(413, f"body of {declared} bytes is over this server's {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"body is over this server's limit of {limit} bytes")
            chunks.append(chunk)
        if not size:
            raise HTTPError(400, "empty body: send the image file as the request body")
        return b"".join(chunks)

    def _decode(self, data: bytes) -> Decoded:
        """In a decode thread: the model's input and view of an image file's bytes."""
        decoded = decode(data, self.session.metadata, name="request body", crop=self.crop)
        if decoded.error is not None:
            raise HTTPError(400, decoded.error)
        return decoded

    def _overlays(self, view: np.ndarray, cams: np.ndarray) -> list[str]:
        """In a decode thread: one base64 PNG per map, the map blended on the model's view."""
        from PIL import Image

        from ..io.colormaps import overlay

        encoded = []
        for cam in cams:
            buffer = io.BytesIO()
            picture = overlay(view, cam, self.colormap, self.alpha)
            Image.fromarray(picture).save(buffer, format="PNG", compress_level=1)
            encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
        return encoded

    # -------------------------------------------------------------------------------- batching

    @serve.batch(max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=0.005)
    async def _explain_batch(self, jobs: list[_Job]) -> list[_Outcome]:
        await self._gate.close()
        started = time.perf_counter()
        try:
            self._count("batches", batch_size=len(jobs))
            log.debug("gradcam replica %s: batch of %d", self.replica, len(jobs))
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._infer_pool, self._infer, jobs)
        finally:
            self._expect_next(len(jobs), time.perf_counter() - started)
            await self._gate.open(self.expected_batch_size)

    def _expect_next(self, last_batch: int, seconds: float) -> None:
        """The next batch's size: the requests of the batch that just ran (their clients are
        likely to send again) plus those that arrived meanwhile, at most max_batch_size; and
        its longest wait for them: batch_wait_ms, at most WAIT_SHARE of the time the expected
        batch will run, estimated from the last one's `seconds` per image. Ray Serve starts a
        batch when it is full, or after the wait."""
        expected = min(self.max_batch_size, max(1, last_batch + self._pending))
        estimate = seconds / max(1, last_batch) * expected
        self.expected_batch_size = expected
        self.batch_wait_s = min(self.batch_wait_ms / 1000.0, WAIT_SHARE * estimate)
        self._explain_batch.set_max_batch_size(self.expected_batch_size)
        self._explain_batch.set_batch_wait_timeout_s(self.batch_wait_s)

    def _infer(self, jobs: Sequence[_Job]) -> list[_Outcome]:
        """In the inference thread: one session call per method among `jobs`."""
        outcomes: list[_Outcome | None] = [None] * len(jobs)
        for method in dict.fromkeys(job.query.method for job in jobs):
            index = [i for i, job in enumerate(jobs) if job.query.method == method]
            group = [jobs[i] for i in index]
            x = model_input([job.decoded for job in group])
            t = torch.tensor([job.query.targets for job in group], dtype=torch.int64)
            failed: list[int] = []
            try:
                result = self.session(x, t, method=method).to("cpu")
            except NonFiniteMapsError as exc:  # those requests fail; the others are fine
                result, failed = exc.result.to("cpu"), exc.indices
            probs = result.probabilities()
            overlays = any(job.query.overlay for job in group)
            cams = result.cams.numpy() if overlays else None
            lowres = result.cams_lowres.numpy()
            for b, (i, job) in enumerate(zip(index, group, strict=True)):
                maps = job.query.maps
                outcomes[i] = _Outcome(
                    probabilities=probs[b],
                    explained=result.target_classes[b, :maps].tolist(),
                    cams_lowres=lowres[b, :maps],
                    cams=None if cams is None else cams[b, :maps],
                    error=NONFINITE if b in failed else None,
                )
        return outcomes

    def __del__(self):
        for pool in ("_decode_pool", "_infer_pool"):
            if hasattr(self, pool):
                getattr(self, pool).shutdown(wait=False, cancel_futures=True)


def app(
    model: str | os.PathLike | SessionFactory,
    *,
    replicas: int = 1,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS,
    max_ongoing_requests: int | None = None,
    env: dict[str, str] | None = None,
    **options: Any,
) -> serve.Application:
    """The bound application `gradcam-fast serve` runs: `replicas` copies of
    `GradCAMDeployment`, each reserving `cpus_per_replica` CPUs and `gpus_per_replica` GPUs (a
    replica with a GPU runs on CUDA unless `device` says otherwise). `max_ongoing_requests` per
    replica defaults to 4 x `max_batch_size` (a batch running, the next ones forming). `env`:
    environment variables of the replica processes. Other `options` go to the deployment
    (`device`, `max_body_bytes`, ...). Run it with `serve.run(app(...), route_prefix=...)`.
    """
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if gpus_per_replica > 0:
        options.setdefault("device", "cuda")
    actor_options: dict[str, Any] = {"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    if env:
        actor_options["runtime_env"] = {"env_vars": dict(env)}
    if not options.get("intra_op_threads"):
        options["intra_op_threads"] = max(1, int(cpus_per_replica))
    deployment = GradCAMDeployment.options(
        num_replicas=replicas,
        max_ongoing_requests=max_ongoing_requests or 4 * max_batch_size,
        ray_actor_options=actor_options,
    )
    return deployment.bind(
        model, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, **options
    )
