"""`gradcam-fast bench`: a table of timed calls, with the eager reference alongside."""

from __future__ import annotations

import pytest

from gradcam_fast.cli import main


@pytest.mark.slow
def test_bench_prints_a_row_per_batch_size_with_the_eager_speedup(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path))
    code = main(["bench", "--arch", "vgg11", "--weights", "random", "--image-size", "32",
                 "--batch-size", "1", "3", "--rounds", "2", "--eager", "--device", "cpu"])  # fmt: skip
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    rows = [line.strip("|").split("|") for line in out[2:]]
    assert [int(r[0]) for r in rows] == [1, 3]
    for batch, ms, per_s, eager_ms, speedup in rows:
        assert float(ms) > 0 and float(eager_ms) > 0
        assert abs(float(per_s) - int(batch) * 1000 / float(ms)) / float(per_s) < 0.05
        assert speedup.strip().endswith("x") and float(speedup.strip()[:-1]) > 0


def test_bench_eager_needs_the_arch_not_a_model_file(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not a model")
    code = main(["bench", "--model", str(model), "--eager"])
    assert code == 2 and "--eager rebuilds the network" in capsys.readouterr().err
