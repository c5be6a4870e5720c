"""Long runs: 2,000 calls with mixed batch sizes do not grow the process's memory after warm-up.

RSS is read from /proc/self/statm (Linux). The bound is generous against allocator noise and
far below what a leak of one result per call would add (a batch-8 result here is ~60 KB, so
1,800 leaked results would be > 50 MB).
"""

from __future__ import annotations

import gc
import os
import sys

import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx

SIZE, K = 32, 2
CALLS, WARMUP = 2000, 200
BATCHES = (1, 3, 8, 2, 5)
GROWTH_LIMIT_MB = 16.0

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc/self/statm (Linux)"
)


def rss_mb() -> float:
    """Resident set size of this process, in MiB."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(session: GradCAMSession, calls: int = CALLS) -> tuple[float, float, float]:
    """(RSS after warm-up, RSS after `calls` calls, largest RSS seen after warm-up), MiB."""
    gen = torch.Generator().manual_seed(0)
    pool = {b: torch.randn(b, 3, SIZE, SIZE, generator=gen) for b in BATCHES}
    targets = [None, [[-2, 3]], [[1, -1]]]
    after_warmup = peak = 0.0
    for i in range(calls):
        batch = BATCHES[i % len(BATCHES)]
        t = targets[i % len(targets)]
        if isinstance(t, list):
            t = t * batch
        result = session(pool[batch], t, method=("gradcam", "gradcam++")[i % 2])
        assert result.cams.shape == (batch, K, SIZE, SIZE)
        if i == WARMUP - 1:
            gc.collect()
            after_warmup = rss_mb()
        elif i >= WARMUP and i % 100 == 0:
            peak = max(peak, rss_mb())
    gc.collect()
    end = rss_mb()
    return after_warmup, end, max(peak, end)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Single-threaded post-processing: on a small shared machine, thread hand-offs dominate
    calls this small (the memory figures are the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory):
    model = make_tiny_vgg(num_classes=10, seed=5)
    path = tmp_path_factory.mktemp("memory") / "tiny.onnx"
    return export_onnx(model, path, image_size=SIZE, num_targets=K, validate=False)


def report(what: str, calls: int, start: float, end: float, peak: float) -> None:
    print(
        f"\n{what}: RSS over {calls} calls (batches {BATCHES}): {start:.1f} MiB after "
        f"{WARMUP} warm-up calls, {end:.1f} MiB at the end, peak {peak:.1f} MiB, "
        f"growth {peak - start:+.1f} MiB",
        file=sys.stderr,
    )


@pytest.mark.slow
def test_rss_does_not_grow_over_2000_calls(onnx_path):
    start, end, peak = measure(GradCAMSession(onnx_path, device="cpu", intra_op_threads=1))
    report("onnxruntime", CALLS, start, end, peak)
    assert peak - start < GROWTH_LIMIT_MB


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime, max_batch_size=4", "torch"])
def test_rss_does_not_grow_chunked_and_torch(onnx_path, backend):
    if backend == "torch":
        model = make_tiny_vgg(num_classes=10, seed=5)
        session = GradCAMSession.from_model(model, image_size=SIZE, num_targets=K, device="cpu")
    else:
        session = GradCAMSession(onnx_path, device="cpu", max_batch_size=4, intra_op_threads=1)
    start, end, peak = measure(session, calls=CALLS // 4)
    report(backend, CALLS // 4, start, end, peak)
    assert peak - start < GROWTH_LIMIT_MB


def live_tensor_bytes() -> int:
    """Bytes of the distinct CPU storages behind the tensors Python can reach."""
    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if type(obj) is torch.Tensor and obj.device.type == "cpu":
            try:
                storage = obj.untyped_storage()
            except (RuntimeError, NotImplementedError):  # fake/symbolic tensors of an export
                continue
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def test_distinct_batch_sizes_leave_no_buffers_behind(onnx_path):
    """A service sees many batch sizes: once their results are dropped, nothing sized by them
    stays alive (per-thread output buffers cached per batch size used to: 115 MiB per thread
    after batch sizes 1..16 of a model with 0.9 MB of outputs per image)."""
    session = GradCAMSession(onnx_path, device="cpu", intra_op_threads=1)
    x = torch.randn(16, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    session(x[:1])
    before = live_tensor_bytes()
    for batch in range(1, 17):
        assert session(x[:batch]).cams.shape[0] == batch
    one = session(x[:1])
    per_image = sum(t[0].nbytes for t in vars(one).values() if isinstance(t, torch.Tensor))
    assert live_tensor_bytes() - before < 2 * per_image
