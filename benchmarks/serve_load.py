"""Latency and throughput of `gradcam_fast.services.ray_serve` on Ray Serve under a bounded load on
loopback, with and without batching, next to the bare session call, in one run.

    python -m benchmarks.serve_load                  # VGG19 (random weights) at 224
    python -m benchmarks.serve_load --arch vgg11 --json serve.json
    python -m benchmarks.serve_load --backend openvino --precision bfloat16

A fixed number of requests (JPEGs of 300 to 640 px, `POST /explain`) at concurrency 1, 8 and 32
from keep-alive client threads on 127.0.0.1, through the ingress `gradcam-fast serve` uses
(`--ingress`), to one replica holding all the CPUs, with batching (`max_batch_size` 8,
`batch_wait_ms` 200) and without. Per level: p50 and p99 latency, images/s and the batch sizes
the replica ran. The bare session runs in this process, timed next to each level (the machine's
load drifts), and also in paired rounds with served requests: at concurrency 1 one request
against one batch-1 call (`paired_c1`), at 8 a burst of requests (eight batches' worth) against
one batch-8 call (`paired_throughput`).
Every served answer is first checked against the bare session's. Under pytest
(test_serve_load.py) it runs once on a tiny model with a few requests per level.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.config import Profile, get_profile
from benchmarks.photos import jpegs
from benchmarks.tables import markdown_table
from benchmarks.timing import median_ratio, median_s

__all__ = ["CONFIGS", "LoadResult", "main", "report", "run", "run_load"]

CONCURRENCY = (1, 8, 32)
SETTLE_S = 0.1  # quiet time before each side of a paired round
BURST = 8  # requests per client in a paired throughput round: at c=8, eight full batches


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]  # seconds, one per request
    errors: int
    batch_sizes: dict[int, int]  # session calls the replica ran at each batch size

    @property
    def p50(self) -> float:
        return float(np.percentile(self.latencies, 50))

    @property
    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99))

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds


def _post(connection: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
    connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    return response.status, response.read()


def _once(port: int, path: str, body: bytes | None = None) -> bytes:
    """One request on a connection of its own (POST with a body, else GET); raises unless 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        if body is None:
            connection.request("GET", path)
            response = connection.getresponse()
            status, answer = response.status, response.read()
        else:
            status, answer = _post(connection, path, body)
    finally:
        connection.close()
    if status != 200:  # e.g. Ray's memory monitor killed the replica
        raise AssertionError(f"{path} answered {status}: {answer[:300]!r}")
    return answer


def _stats(port: int, prefix: str) -> dict[int, int]:
    stats = json.loads(_once(port, f"{prefix}/stats"))
    return {int(k): v for k, v in stats["batch_sizes"].items()}


def run_load(
    port: int, prefix: str, files: list[bytes], concurrency: int, requests: int
) -> LoadResult:
    """`requests` POSTs of `files` (in turn) from `concurrency` threads, each with its own
    keep-alive connection to 127.0.0.1:`port`; returns when all have been answered."""
    before = _stats(port, prefix)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    counter = iter(range(requests))
    start_line = threading.Barrier(concurrency + 1)

    def worker() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        start_line.wait()
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    status, _ = _post(connection, f"{prefix}/explain", files[i % len(files)])
                except OSError:
                    status = None
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
                seconds = time.perf_counter() - start
                with lock:
                    latencies.append(seconds)
                    errors[0] += status != 200
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    after = _stats(port, prefix)
    ran = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    return LoadResult(concurrency, requests, seconds, latencies, errors[0], ran)


def paired_c1(port: int, prefix: str, bare: Bare, files: list[bytes], pairs: int) -> dict:
    """At concurrency 1, `pairs` rounds of one bare batch-1 call then one served request of the
    same file: the median of the within-round ratios (the machine's drifting load cancels out).
    Each side starts SETTLE_S after the other ended: ONNX Runtime's spinning threads slowed the
    request right after a bare call by about 13 ms on 2 cores (2026-12-01)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    served, bare_s = [], []
    try:
        for i in range(pairs):
            data = files[i % len(files)]
            x = bare.decode(data)[None]
            time.sleep(SETTLE_S)
            bare_s.append(median_s(lambda x=x: bare.session(x), 1))
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            status, body = _post(connection, f"{prefix}/explain", data)
            served.append(time.perf_counter() - start)
            if status != 200:
                raise AssertionError(f"{prefix}/explain answered {status}: {body[:300]!r}")
    finally:
        connection.close()
    return {
        "paired_ratio": median_ratio(served, bare_s),
        "paired_served_s": statistics.median(served),
        "paired_bare_s": statistics.median(bare_s),
    }


def paired_throughput(
    port: int, prefix: str, bare: Bare, files: list[bytes], concurrency: int, rounds: int
) -> dict:
    """`rounds` rounds of one bare batch-8 call then BURST x `concurrency` requests from
    `concurrency` clients (`run_load`): the median of the within-round ratios of served to
    bare throughput. The level's own figure sets a whole level's throughput against bare calls
    timed before and after it, seconds apart; on this machine those moved by up to 30% between
    the two (2026-12-03), more than the ratio's distance to its target. A burst is eight
    batches long because the first batch's decoding and the last answer's trip are not
    overlapped with inference: bursts of three batches gave 0.81 where the level gave 0.92."""
    served, bare_s = [], []
    for _ in range(rounds):
        time.sleep(SETTLE_S)
        bare_s.append(median_s(lambda: bare.session(bare.x8), 1) / 8)
        time.sleep(SETTLE_S)
        result = run_load(port, prefix, files, concurrency, BURST * concurrency)
        if result.errors:
            raise AssertionError(f"{prefix}/explain failed {result.errors} requests")
        served.append(result.seconds / result.requests)
    return {
        "paired_throughput_ratio": median_ratio(bare_s, served),
        "paired_served_s_per_image": statistics.median(served),
        "paired_bare_b8_s_per_image": statistics.median(bare_s),
    }


class Bare:
    """The bare session in this process, with as many threads as the replica, timed right
    before each served level (this machine's load drifts)."""

    def __init__(
        self, model: Path, files: list[bytes], threads: int, rounds: int, session_options: dict
    ):
        import torch

        from gradcam_fast import GradCAMSession

        self.session = GradCAMSession(
            model, device="cpu", intra_op_threads=threads, **session_options
        )
        self.files, self.rounds = files, rounds
        self.x1 = self.decode(files[0])[None]
        self.x8 = torch.stack([self.decode(files[i % len(files)]) for i in range(8)])
        self.session(self.x8)  # warm-up, both shapes
        self.session(self.x1)

    def decode(self, data: bytes):
        from gradcam_fast.io.images import load_image, preprocess, preprocessing_of

        meta = self.session.metadata
        image = load_image(data)
        return preprocess(image, meta.image_size, meta.mean, meta.std, **preprocessing_of(meta))

    def figures(self, concurrency: int) -> dict[str, float]:
        """At concurrency 1: seconds per batch-1 call, tensor in and with the decoding; above:
        seconds per image at batch 8."""
        if concurrency == 1:
            return {
                "bare_b1_s": median_s(lambda: self.session(self.x1), self.rounds),
                "bare_decode_b1_s": median_s(
                    lambda: self.session(self.decode(self.files[1])[None]), self.rounds
                ),
            }
        rounds = max(2, self.rounds // 3)
        return {"bare_b8_s_per_image": median_s(lambda: self.session(self.x8), rounds) / 8}

    def expected_maps(self, data: bytes) -> np.ndarray:
        return self.session(self.decode(data)[None]).cams_lowres[0].numpy()


def check_answer(port: int, prefix: str, data: bytes, expected: np.ndarray) -> None:
    """The served maps of `data` equal the bare session's (relative error under 1e-4, which is
    infinite for NaN or Inf)."""
    import torch

    from benchmarks.checks import check_agreement

    body = _once(port, f"{prefix}/explain", data)
    got = torch.tensor(json.loads(body)["cams_lowres"], dtype=torch.float64)
    check_agreement("the served maps and the session's", got, torch.from_numpy(expected))


# what `gradcam-fast serve` gives its replicas: torch's OpenMP threads sleep between ops instead
# of spinning on the cores ONNX Runtime needs (README, "Services")
REPLICA_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
# max_batch_size, batch_wait_ms: the defaults of `gradcam-fast serve`, and no batching
CONFIGS = {"batching": (8, 200.0), "no_batching": (1, 0.0)}


def run(
    setting: Profile,
    cpus: int | None = None,
    configs: dict | None = None,
    ingress: str = "auto",
    session_options: dict | None = None,
) -> dict:
    """The whole benchmark, behind `ingress` (gradcam_fast.services.serve_ingress), the bare
    session and the replicas opened with `session_options` (GradCAMSession's backend and
    precision); returns {"config", "served": {config: [(LoadResult, bare figures timed just
    before it)...]}}."""
    import ray
    from ray import serve

    from benchmarks.contenders import make_model
    from gradcam_fast import export_onnx
    from gradcam_fast.runtime.session import cpu_count
    from gradcam_fast.services.ray_serve import app
    from gradcam_fast.services.serve_ingress import use_ingress

    cpus = cpus or cpu_count()
    files = jpegs(16)
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    served: dict[str, list[tuple[LoadResult, dict[str, float]]]] = {}
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = dict(os.environ)  # use_ingress sets Ray's variables; restored at the end
    try:
        net, size = make_model(setting.model), setting.image_size
        model = export_onnx(net, work / "model.onnx", image_size=size, validate=False)
        session_options = session_options or {}
        bare = Bare(model, files, cpus, setting.serve_bare_rounds, session_options)
        expected = bare.expected_maps(files[3])
        load = os.getloadavg()
        started = time.perf_counter()
        ingress = use_ingress(ingress)
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        startup = time.perf_counter() - started
        for name, (max_batch_size, wait_ms) in (configs or CONFIGS).items():
            prefix = f"/{name}"
            serve.run(
                app(str(model), cpus_per_replica=cpus, max_batch_size=max_batch_size,
                    batch_wait_ms=wait_ms, max_ongoing_requests=32, env=REPLICA_ENV,
                    session_options=session_options),
                name=name, route_prefix=prefix,
            )  # fmt: skip
            check_answer(port, prefix, files[3], expected)
            run_load(port, prefix, files, 8, 16)  # warm-up: both batch shapes, connections
            served[name] = []
            for c in CONCURRENCY:
                reference = bare.figures(c)
                result = run_load(port, prefix, files, c, setting.serve_requests[c])
                if c == 1:
                    reference |= paired_c1(port, prefix, bare, files, setting.serve_requests[1])
                else:  # the bare batch 8 timed before and after the level, averaged
                    key = "bare_b8_s_per_image"
                    reference[key] = (reference[key] + bare.figures(c)[key]) / 2
                if c == 8:
                    rounds = max(2, setting.serve_requests[8] // 16)
                    reference |= paired_throughput(port, prefix, bare, files, c, rounds)
                served[name].append((result, reference))
            serve.delete(name)  # one replica at a time holds the model and the CPUs
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        os.environ.clear()
        os.environ.update(environment)
    config = {
        "arch": setting.model, "image_size": setting.image_size, "cpus": cpus,
        "requests": setting.serve_requests, "python": platform.python_version(),
        "ray": ray.__version__, "ingress": ingress, "session": bare.session.describe_choice(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_before_and_after": [round(v, 2) for v in (*load, *os.getloadavg())],
        "ray_and_serve_start_s": round(startup, 1),
        "max_batch_size_and_batch_wait_ms": dict(configs or CONFIGS),
    }  # fmt: skip
    return {"config": config, "served": served}


def report(figures: dict) -> str:
    """The table printed by the script, with the issue's target ratios (each against the bare
    figure timed just before that level)."""
    rows = []
    for name, results in figures["served"].items():
        for r, bare in results:
            if r.concurrency == 1:
                reference = f"{bare['bare_b1_s'] * 1e3:.0f}/{bare['bare_decode_b1_s'] * 1e3:.0f} ms"
            else:
                reference = f"b8 {1 / bare['bare_b8_s_per_image']:.2f} img/s"
            sizes = ", ".join(f"{k}: {v}" for k, v in sorted(r.batch_sizes.items()))
            ms = (r.p50 * 1e3, r.p99 * 1e3)
            rows.append({"name": name, "r": r, "ms": ms, "bare": reference, "sizes": sizes})
    lines = [json.dumps(figures["config"])]
    lines += markdown_table(
        "config | conc | reqs | p50 ms | p99 ms | img/s | bare | err | batch sizes run (size: calls)",
        "lrrrrrrrl",
        "{name} | {r.concurrency} | {r.requests} | {ms[0]:.1f} | {ms[1]:.1f} | {r.throughput:.2f} | "
        "{bare} | {r.errors} | {sizes}",
        rows,
    )
    by = {(n, r.concurrency): (r, b) for n, rs in figures["served"].items() for r, b in rs}
    r1, b1 = by[("batching", 1)]
    r8, b8 = by[("batching", 8)]
    r32, _ = by[("batching", 32)]
    none32, _ = by[("no_batching", 32)]
    lines += [
        "bare: at c=1 the batch-1 call without/with decoding (timed before the level), else batch 8"
        " (timed before and after the level, averaged)",
        "targets (issue 16), batching deployment:",
        f"  c=1  p50 / bare batch-1 call        {r1.p50 / b1['bare_b1_s']:.3f}  (target <= 1.10)",
        f"  c=1  served / bare, paired rounds   {b1['paired_ratio']:.3f}  (the same, interleaved)",
        f"  c=1  p50 / bare decode + call       {r1.p50 / b1['bare_decode_b1_s']:.3f}",
        f"  c=8  throughput / bare batch 8      "
        f"{r8.throughput * b8['bare_b8_s_per_image']:.3f}  (target >= 0.9)",
        f"  c=8  served / bare, paired rounds   {b8['paired_throughput_ratio']:.3f}  "
        "(the same, interleaved)",
        f"  c=32 p99 / p50                      {r32.p99 / r32.p50:.3f}  (target <= 3)",
        f"  c=32 throughput batching / none     {r32.throughput / none32.throughput:.3f}",
    ]
    return "\n".join(lines)


def _as_json(figures: dict) -> dict:
    def row(r: LoadResult, bare: dict) -> dict:
        return {"concurrency": r.concurrency, "requests": r.requests, "seconds": r.seconds,
                "p50_s": r.p50, "p99_s": r.p99, "images_per_s": r.throughput, "errors": r.errors,
                "batch_sizes": r.batch_sizes, "bare": bare}  # fmt: skip

    served = {name: [row(*x) for x in results] for name, results in figures["served"].items()}
    return {"config": figures["config"], "served": served}


def main(argv: list[str] | None = None) -> int:
    from gradcam_fast.services.serve_ingress import INGRESS_CHOICES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vgg19")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the request counts")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--max-batch-size", type=int, default=CONFIGS["batching"][0])
    parser.add_argument("--batch-wait-ms", type=float, default=CONFIGS["batching"][1])
    parser.add_argument(
        "--ingress", choices=INGRESS_CHOICES, default="auto",
        help="HAProxy or Ray Serve's Python proxy before the replicas (default auto: as "
        "`gradcam-fast serve`)",
    )  # fmt: skip
    parser.add_argument("--backend", choices=("onnxruntime", "openvino"), default="onnxruntime")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "int8"), default="float32")
    parser.add_argument("--calibration", type=Path, help="photos for --precision int8")
    args = parser.parse_args(argv)
    options = {"backend": args.backend, "precision": args.precision}
    if args.calibration is not None:
        options["calibration"] = args.calibration
    configs = {**CONFIGS, "batching": (args.max_batch_size, args.batch_wait_ms)}
    full = get_profile("full")
    requests = {c: max(c, round(n * args.scale)) for c, n in full.serve_requests.items()}
    setting = replace(full, model=args.arch, image_size=args.image_size, serve_requests=requests)
    figures = run(setting, configs=configs, ingress=args.ingress, session_options=options)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(_as_json(figures), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
