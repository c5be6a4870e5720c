"""`gradcam-fast serve` as a user runs it: a process that starts its own Ray, answers on
127.0.0.1 (behind HAProxy, the default where Ray Serve bundles it, and behind Ray's proxy), and
on SIGTERM shuts Ray Serve and Ray down and exits 0.

A separate module from test_serve.py so that its Ray (which this command must start itself) never
runs next to that module's.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray.serve", reason='Ray Serve is an optional extra: pip install ".[serve]"')
pytest.importorskip("starlette", reason='Ray Serve is an optional extra: pip install ".[serve]"')

from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx
from gradcam_fast.io.images import load_image, preprocess
from gradcam_fast.services.serve_ingress import haproxy_binary

ROOT = Path(__file__).resolve().parents[1]
JPEG = (ROOT / "examples" / "images" / "cat.jpg").read_bytes()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, data: bytes | None = None) -> tuple[int, dict]:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as r:
        return r.status, json.loads(r.read())


@pytest.mark.slow
@pytest.mark.parametrize("ingress", ["auto", "proxy"])
def test_serve_command_answers_then_stops_cleanly_on_sigterm(tmp_path, ingress):
    model = export_onnx(
        make_tiny_vgg(seed=2), tmp_path / "tiny.onnx", image_size=64, validate=False
    )
    port = _free_port()
    argv = [sys.executable, "-m", "gradcam_fast.cli", "serve", "--model", str(model)]
    argv += ["--port", str(port), "--cpus-per-replica", "1", "--max-batch-size", "2"]
    argv += ["--ingress", ingress]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a Ray of its own
    env["PYTHONPATH"] = str(ROOT)
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, f"serve exited early:\n{log.read_text()[-3000:]}"
            try:
                if _get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            except (OSError, urllib.error.HTTPError):
                pass
            assert time.monotonic() < deadline, f"not ready in 300 s:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        status, body = _get(f"http://127.0.0.1:{port}/explain", JPEG)
        session = GradCAMSession(model, device="cpu", intra_op_threads=1)
        meta = session.metadata
        expected = session(preprocess(load_image(JPEG), 64, meta.mean, meta.std)[None])
        got = np.asarray(body["cams_lowres"], dtype=np.float64)
        want = expected.cams_lowres[0].numpy()
        assert status == 200 and np.isfinite(got).all() and got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
        if ingress == "auto" and haproxy_binary():
            _check_the_exposed_ports_notice(log)

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    text = log.read_text()
    assert "shutting down" in text and "gradcam-fast: stopped" in text, text[-3000:]
    chosen = "haproxy" if ingress == "auto" and haproxy_binary() else "proxy"
    assert f"ingress: {chosen})" in text, text[-3000:]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # nothing listens on the port any more


def _check_the_exposed_ports_notice(log: Path) -> None:
    """Behind HAProxy the start-up names its statistics and metrics ports with the firewall
    rule, and tells the truth: HAProxy listens on those ports on every interface."""
    deadline = time.monotonic() + 60
    while not (
        found := re.search(r"statistics page \(port (\d+).*metrics \(port (\d+)", log.read_text())
    ):
        assert time.monotonic() < deadline, (
            f"no notice of HAProxy's ports:\n{log.read_text()[-3000:]}"
        )
        time.sleep(0.5)
    stats, metrics = int(found[1]), int(found[2])
    assert f"--dports {stats},{metrics} ! -i lo -j DROP" in log.read_text()
    for port in (stats, metrics):
        assert _listening_addresses(port) == {"0.0.0.0"}, port


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses with a socket listening on `port` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if int(hex_port, 16) == port and state == "0A":  # LISTEN
            found.add(socket.inet_ntoa(int(address, 16).to_bytes(4, "little")))
    return found
