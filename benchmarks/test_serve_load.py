"""The Ray Serve load benchmark (benchmarks/serve_load.py) runs once on a tiny model. No timing
is judged."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.config import active_profile
from benchmarks.serve_load import CONFIGS, report, run


def test_serve_load_runs_and_answers_right():
    """Once, cheaply (tiny model, a few requests per level): every request answered 200, the
    replica's batch sizes add up to the requests and respect max_batch_size, figures finite
    (the paired rounds' too)."""
    pytest.importorskip("ray.serve", reason='Ray Serve is optional: pip install ".[serve]"')
    pytest.importorskip("starlette", reason='Ray Serve is optional: pip install ".[serve]"')
    figures = run(active_profile())
    for name, results in figures["served"].items():
        limit = CONFIGS[name][0]
        for r, bare in results:
            assert r.errors == 0 and len(r.latencies) == r.requests
            paired = {1: "paired_ratio", 8: "paired_throughput_ratio"}.get(r.concurrency)
            if paired:
                assert np.isfinite(bare[paired]) and bare[paired] > 0
            assert sum(k * v for k, v in r.batch_sizes.items()) == r.requests
            assert max(r.batch_sizes) <= limit
            assert np.isfinite([r.p50, r.p99, r.throughput]).all()
    print(report(figures))
