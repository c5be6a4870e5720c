"""A small seeded VGG for fast tests, benchmarks and examples: torchvision's VGG class with small
layers, the one tiny network of the repository (tests/tiny_models.py re-exports it)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import VGG, make_layers

__all__ = ["make_tiny_vgg"]


def make_tiny_vgg(
    cfg: list = (8, "M", 16, "M", 16, "M"),
    num_classes: int = 10,
    pool: int = 2,
    batch_norm: bool = False,
    seed: int = 0,
    hidden: int = 32,
) -> VGG:
    """A torchvision `VGG` with a small `features` config, an AdaptiveAvgPool2d(pool) and a
    three-Linear classifier shaped like VGG's, seeded, in eval mode. BatchNorm layers get
    non-trivial running statistics so their VJP is really exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = VGG(make_layers(list(cfg), batch_norm=batch_norm), num_classes=num_classes)
        channels = [c for c in cfg if c != "M"][-1]
        model.avgpool = nn.AdaptiveAvgPool2d(pool)
        model.classifier = nn.Sequential(
            nn.Linear(channels * pool * pool, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(),
            nn.Linear(hidden, num_classes),
        )
        for m in model.classifier:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.3, generator=gen)
                nn.init.normal_(m.bias, 0, 0.1, generator=gen)
    with torch.no_grad():
        for m in model.features:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.2, generator=gen)
    return model.eval()
