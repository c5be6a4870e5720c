"""The audit benchmark (benchmarks/audit_speed.py) runs once on a tiny model and reports every
figure; the peers' means of the same metrics are close to ours. No timing is judged."""

from __future__ import annotations

import math

import pytest

from benchmarks.audit_speed import main


@pytest.mark.slow
def test_tiny_run_reports_every_figure():
    pytest.importorskip("torchcam")
    pytest.importorskip("pytorch_grad_cam")
    figures = main(["--tiny", "--images", "2", "--steps", "5", "--rounds", "1", "--int8"])
    t = figures["throughput"]
    assert t["image_steps"] == 2 * 9 and t["ratio"] > 0 and math.isfinite(t["ratio"])
    p = figures["peers"]
    assert all(p[k] > 0 for k in ("ours_road_s", "pgc_road_s", "torchcam_del_ins_drop_s"))
    for name, (ours, theirs) in p["means"].items():
        assert math.isfinite(ours) and math.isfinite(theirs), name
    # the same metric on each library's own Grad-CAM maps of the same images
    assert abs(p["means"]["deletion"][0] - p["means"]["deletion"][1]) < 0.1
    q = figures["int8"]  # our audits in int8 against float32, timed: positive and finite
    assert all(math.isfinite(v) and v > 0 for v in q.values()), q
