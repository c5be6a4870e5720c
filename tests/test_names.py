"""One name per concept (issue 23): the channel-weights model is `channel_weights_only`, the
option lists live in format/options.py; the older spellings still work and warn."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMGraph, export_onnx
from gradcam_fast.format.onnx_props import file_metadata
from gradcam_fast.format.options import (
    CALIBRATION_METHODS,
    EXPORT_PRECISIONS,
    channel_weights_only_of,
    check_calibration_method,
    one_precision,
)

SIZE = 32


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_vgg()


def test_graph_gradients_false_warns_and_is_the_channel_weights_graph(tiny):
    images, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([[-1, 3], [2, -2]])
    new = GradCAMGraph(tiny, None, 2, image_size=SIZE, channel_weights_only=True)
    with pytest.warns(DeprecationWarning, match=r"use channel_weights_only=True"):
        old = GradCAMGraph(tiny, None, 2, gradients=False, image_size=SIZE)
    with pytest.warns(DeprecationWarning, match=r"GradCAMGraph\(gradients=False\)"):
        positional = GradCAMGraph(tiny, None, 2, False, SIZE)  # the old fourth parameter
    assert old.channel_weights_only and positional.channel_weights_only
    with torch.no_grad():
        want = new(images, targets)
        for graph in (old, positional):
            got = graph(images, targets)
            assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert want[3].shape == (2, 2, 16)  # channel weights [B, K, C]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new spelling and the default never warn
        assert not GradCAMGraph(tiny, None, 2, image_size=SIZE).channel_weights_only


def test_export_gradients_false_warns_and_exports_the_channel_weights_model(tiny, tmp_path):
    with pytest.warns(DeprecationWarning, match=r"export_onnx\(gradients=False\) is deprecated"):
        old = export_onnx(tiny, tmp_path / "old.onnx", image_size=SIZE, gradients=False)
    new = export_onnx(tiny, tmp_path / "new.onnx", image_size=SIZE, channel_weights_only=True)
    for path in (old, new):
        meta = file_metadata(path)
        assert meta.channel_weights_only and meta.gradients is False  # the file's key is kept
        assert meta.output_names[3] == "channel_weights"
    with pytest.warns(DeprecationWarning):
        full = export_onnx(tiny, tmp_path / "full.onnx", image_size=SIZE, gradients=True)
    assert not file_metadata(full).channel_weights_only


def test_both_spellings_asking_for_both_models_are_refused(tiny, tmp_path):
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="exclude each other"):
        export_onnx(
            tiny, tmp_path / "m.onnx", image_size=SIZE, channel_weights_only=True, gradients=True
        )
    assert list(tmp_path.iterdir()) == []
    with pytest.warns(DeprecationWarning):  # the same model asked twice is that model
        assert channel_weights_only_of(True, False, "f") is True


def test_cached_model_gradients_false_warns_and_caches_the_channel_weights_file(
    tmp_path, monkeypatch
):
    from gradcam_fast.app import model_cache
    from gradcam_fast.export import onnx_export

    asked = []

    def fake_export(arch, path, **kw):
        asked.append(kw["channel_weights_only"])
        path.write_bytes(b"")
        return path

    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(tmp_path))
    monkeypatch.setattr(onnx_export, "export_onnx", fake_export)
    with pytest.warns(DeprecationWarning, match=r"cached_model\(gradients=False\)"):
        old = model_cache.cached_model("vgg11", "random", image_size=SIZE, gradients=False)
    new = model_cache.cached_model("vgg11", "random", image_size=SIZE, channel_weights_only=True)
    full = model_cache.cached_model("vgg11", "random", image_size=SIZE)
    assert old == new and new.name.endswith("-k1-cw.onnx") and not full.name.endswith("-cw.onnx")
    assert asked == [True, False]  # the channel-weights file was exported once


def test_option_lists_live_in_one_place_and_the_parsers_offer_them():
    from gradcam_fast.cli.precision import add_precision_options
    from gradcam_fast.export import onnx_export

    assert onnx_export.EXPORT_PRECISIONS is EXPORT_PRECISIONS
    for export in (True, False):
        parser = argparse.ArgumentParser()
        add_precision_options(parser, export=export)
        offered = {a.dest: a.choices for a in parser._actions}
        assert tuple(offered["calibration_method"]) == CALIBRATION_METHODS
    assert check_calibration_method("entropy") == "entropy"
    with pytest.raises(ValueError, match="calibration method must be one of"):
        check_calibration_method("kl")


def test_one_precision_names_the_spellings_it_refuses():
    assert one_precision({}) == "float32"
    assert one_precision({"fp16=True": "float16", "precision='float16'": "float16"}) == "float16"
    with pytest.raises(ValueError, match=r"^--fp16 and --int8 exclude each other: choose one --pr"):
        one_precision({"--fp16": "float16", "--int8": "int8"}, "--precision")
    with pytest.raises(ValueError, match="bfloat16 is a session's precision"):
        one_precision({"precision='bfloat16'": "bfloat16"})
