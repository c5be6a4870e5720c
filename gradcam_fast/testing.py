"""A small seeded VGG for fast tests, benchmarks and examples: torchvision's VGG class with small
layers, the one tiny network of the repository (tests/tiny_models.py re-exports it)."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.vgg import VGG, make_layers

__all__ = ["SHAPES", "make_tiny_vgg", "shape_pictures", "train_shapes_vgg"]


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


SHAPES = ("square", "frame", "cross")


def shape_pictures(
    n: int, seed: int, size: int = 32, cue_classes: tuple[int, ...] = (), shape_noise: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int, int]]]:
    """uint8 pictures [n, size, size, 3] of one shape each (class = its index in SHAPES) on
    gray noise, below the top 8 rows; their labels and each shape's box (x0, y0, x1, y1).

    `cue_classes`: those classes also carry a background cue, a red bar along the top edge
    (the "water" beside the shark) that says the class as well as the shape does.
    `shape_noise`: the share of pictures whose shape is drawn at random (the label, and the
    cue, kept): a model trained on them learns that the cue predicts the class better."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(SHAPES), (n,), generator=gen)
    pictures = (128 + 30 * torch.randn(n, size, size, 3, generator=gen)).clamp(0, 255)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    boxes = []
    for i in range(n):
        r = int(torch.randint(4, 7, (1,), generator=gen))
        cy = int(torch.randint(8 + r, size - r, (1,), generator=gen))
        cx = int(torch.randint(r, size - r, (1,), generator=gen))
        kind = int(labels[i])
        if torch.rand(1, generator=gen).item() < shape_noise:
            kind = int(torch.randint(0, len(SHAPES), (1,), generator=gen))
        dy, dx = (yy - cy).abs(), (xx - cx).abs()
        if SHAPES[kind] == "square":
            mask = (dy <= r) & (dx <= r)
        elif SHAPES[kind] == "frame":
            mask = (dy <= r) & (dx <= r) & ((dy >= r - 1) | (dx >= r - 1))
        else:
            mask = ((dy <= r) & (dx <= r // 3)) | ((dx <= r) & (dy <= r // 3))
        pictures[i][mask] = 250.0
        if int(labels[i]) in cue_classes:
            pictures[i, :4, :, :] = torch.tensor([250.0, 10.0, 10.0])
        boxes.append((cx - r, cy - r, cx + r + 1, cy + r + 1))
    return pictures.to(torch.uint8), labels, boxes


def train_shapes_vgg(pictures: torch.Tensor, labels: torch.Tensor, epochs: int = 6, seed: int = 0):
    """A small VGG trained for a few seconds (CPU, seeded) on uint8 pictures [n, S, S, 3],
    normalized with ImageNet's mean and std as the exported model expects."""
    from .format.preprocessing import IMAGENET_MEAN, IMAGENET_STD, normalize_pixels

    x = normalize_pixels(pictures, IMAGENET_MEAN, IMAGENET_STD)
    model = make_tiny_vgg(
        cfg=(16, "M", 32, "M", 32, "M"), num_classes=len(SHAPES), hidden=64, seed=seed
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.classifier:  # make_tiny_vgg's wide init and dropout train slowly
            if isinstance(m, nn.Dropout):
                m.p = 0.0
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=5**0.5)
                nn.init.zeros_(m.bias)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(epochs):
            for i in range(0, len(x), 64):
                loss = nn.functional.cross_entropy(model(x[i : i + 64]), labels[i : i + 64])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval()
