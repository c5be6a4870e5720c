"""The in-graph maps benchmark (benchmarks/maps_vs_torch.py) runs on a tiny model and reports
both ways; it checks in the same run that their maps agree. No timing is judged."""

from __future__ import annotations

import pytest

from benchmarks.maps_vs_torch import main


@pytest.mark.slow
def test_tiny_run_reports_both_ways(capsys):
    figures = main(["--tiny", "--batches", "1", "2", "--blocks", "1", "--rounds", "1"])
    assert set(figures["postprocess"]) == {1, 2}
    assert set(figures["session"]) == {(k, b) for k in ("maps", "torch") for b in (1, 2)}
    times = [*figures["session"].values()]
    times += [p[k] for p in figures["postprocess"].values() for k in ("onnxruntime", "torch")]
    assert all(t > 0 for t in times)
    # the two ways' maps agree, in the maps part alone and in whole session calls (NaN fails)
    errors = [p["error"] for p in figures["postprocess"].values()]
    errors += list(figures["session_errors"].values())
    assert len(errors) == 4 and all(e < 1e-4 for e in errors), errors
    report = capsys.readouterr().out
    assert "| 1 |" in report and "| 2 |" in report
    assert "Maps agreement" in report
