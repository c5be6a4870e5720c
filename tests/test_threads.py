"""One session shared by 8 threads at once gives exactly the serial results (ONNX Runtime and
torch backends): per-thread I/O bindings and buffers, results owned by each caller."""

from __future__ import annotations

import threading

import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx

SIZE, K, THREADS, ROUNDS = 32, 2, 8, 25
FIELDS = ("cams", "cams_lowres", "target_classes", "logits", "activations", "gradients")


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vgg(num_classes=10, seed=3)


@pytest.fixture(scope="module")
def onnx_path(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("threads") / "tiny.onnx"
    return export_onnx(tiny, path, image_size=SIZE, num_targets=K, validate=False)


def workloads() -> list[tuple[torch.Tensor, object]]:
    """One job per thread, seeded: every target form, batch sizes 1, 2, 3, 5, each used by two
    threads with different images (threads that share a batch size would share buffers if the
    bindings were not per thread)."""
    gen = torch.Generator().manual_seed(7)
    jobs = []
    for i in range(THREADS):
        batch = (1, 2, 3, 5)[i % 4]
        images = torch.randn(batch, 3, SIZE, SIZE, generator=gen)
        forms = [
            None,
            torch.randint(-10, 10, (batch, K), generator=gen),
            [[c % 10, -1 - (c % 3)] for c in range(batch)],
        ]
        jobs.append((images, forms[i % len(forms)]))
    return jobs


def run_concurrently(session: GradCAMSession, jobs) -> list[list]:
    """Every thread runs its job ROUNDS times, all starting together; returns results[thread]."""
    barrier = threading.Barrier(len(jobs))
    results: list[list] = [[] for _ in jobs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        images, targets = jobs[i]
        try:
            barrier.wait(timeout=60)
            for _ in range(ROUNDS):
                results[i].append(session(images, targets))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a worker thread hung"
    assert errors == []
    return results


def assert_same_as_serial(session: GradCAMSession) -> None:
    jobs = workloads()
    serial = [session(images, targets) for images, targets in jobs]
    concurrent = run_concurrently(session, jobs)
    for i, (expected, got_all) in enumerate(zip(serial, concurrent, strict=True)):
        assert len(got_all) == ROUNDS
        for got in got_all:
            for name in FIELDS:
                a, b = getattr(got, name), getattr(expected, name)
                if a is None or b is None:  # optional fields
                    assert a is None and b is None, (i, name)
                    continue
                assert a.shape == b.shape, (i, name)
                assert torch.equal(a, b), (i, name, float((a - b).abs().max()))
    # every call owns its result: no two results share storage
    pointers = [r.cams.data_ptr() for rs in concurrent for r in rs]
    assert len(set(pointers)) == len(pointers)


def test_onnx_session_from_eight_threads_equals_serial(onnx_path):
    assert_same_as_serial(GradCAMSession(onnx_path, device="cpu"))


def test_onnx_session_with_max_batch_size_from_threads(onnx_path):
    assert_same_as_serial(GradCAMSession(onnx_path, device="cpu", max_batch_size=3))


def test_torch_backend_from_eight_threads_equals_serial(tiny):
    session = GradCAMSession.from_model(tiny, image_size=SIZE, num_targets=K, device="cpu")
    assert_same_as_serial(session)


def test_sessions_opened_from_threads(onnx_path):
    """Opening sessions concurrently (a service starting workers) works and agrees."""
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    out: list[torch.Tensor] = []
    lock = threading.Lock()

    def open_and_run() -> None:
        cams = GradCAMSession(onnx_path, device="cpu")(images).cams
        with lock:
            out.append(cams)

    threads = [threading.Thread(target=open_and_run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(out) == 4 and all(torch.equal(c, out[0]) for c in out)
