"""load_vgg: weights sources, refusals and the metadata it attaches. Never downloads."""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch
from torchvision import models as tvm

import gradcam_fast.model.loading as models
from gradcam_fast import load_vgg


def _random(arch: str, seed: int = 0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_vgg(arch, "random", seed=seed)


@pytest.mark.slow
def test_random_weights_are_seeded_and_in_eval_mode():
    a, b, c = _random("vgg11", 3), _random("vgg11", 3), _random("vgg11", 4)
    assert not a.training
    assert torch.equal(a.features[0].weight, b.features[0].weight)
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert a.gradcam_fast_info.weights == "random:seed=3"
    assert a.gradcam_fast_info.categories[281] == "tabby"


@pytest.mark.slow
def test_random_weights_warn_once(monkeypatch):
    monkeypatch.setattr(models, "_warned_random", set())
    with pytest.warns(UserWarning, match="explain nothing"):
        load_vgg("vgg13", "random")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        load_vgg("vgg13", "random")


def test_random_weights_leave_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _random("vgg11")
    assert torch.equal(torch.rand(3), expected)


def test_imagenet_without_network_names_the_alternatives(monkeypatch):
    def offline(self, *args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(tvm.VGG11_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match=r"no network.*state_dict file.*'random'"):
        load_vgg("vgg11", "imagenet")


@pytest.mark.slow
def test_state_dict_file_round_trip(tmp_path):
    source = _random("vgg11", 5)
    path = tmp_path / "vgg11.pth"
    torch.save(source.state_dict(), path)
    loaded = load_vgg("vgg11", path)
    assert torch.equal(loaded.classifier[6].weight, source.classifier[6].weight)
    assert loaded.gradcam_fast_info.weights.startswith("file:")


@pytest.mark.slow
def test_state_dict_of_another_model_names_keys(tmp_path):
    path = tmp_path / "vgg11.pth"
    torch.save(_random("vgg11").state_dict(), path)
    with pytest.raises(ValueError, match=r"not a state_dict of vgg19: missing keys \[features\.10"):
        load_vgg("vgg19", path)
    resnet_like = {"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}
    torch.save(resnet_like, path)
    with pytest.raises(ValueError, match=r"unexpected keys \[conv1\.weight, fc\.bias\]"):
        load_vgg("vgg11", path)


class _RunsCode:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_RunsCode.marker),))


def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    _RunsCode.marker = str(tmp_path / "pwned")
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"features.0.weight": _RunsCode()}, f, protocol=2)
    with pytest.raises(ValueError, match="weights_only"):
        load_vgg("vgg11", path)
    assert not (tmp_path / "pwned").exists()


def test_unknown_arch_and_missing_file():
    with pytest.raises(ValueError, match=r"load_vgg loads VGGs; use load_model\('resnet50'"):
        load_vgg("resnet50", "random")
    with pytest.raises(ValueError, match=r"unknown arch 'vgg20'.*vgg19"):
        load_vgg("vgg20", "random")
    with pytest.raises(FileNotFoundError, match="neither 'imagenet', 'random' nor an existing"):
        load_vgg("vgg11", "/nonexistent/weights.pth")
