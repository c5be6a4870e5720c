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
    times += [t for p in figures["postprocess"].values() for t in p.values()]
    assert all(t > 0 for t in times)
    report = capsys.readouterr().out
    assert "| 1 |" in report and "| 2 |" in report
