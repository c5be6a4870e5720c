"""`gradcam-fast layers ARCH`: the valid target layers of a CNN with their output shapes."""

from __future__ import annotations

import argparse

from .options import EXIT_OK, positive

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    from ..model.catalog import ARCH_TABLE, ARCHS

    if args.list_archs or args.arch is None:
        for arch in sorted(ARCHS):
            print(arch)
        return EXIT_OK
    import torch

    from ..model.loading import build_architecture
    from ..model.trace import default_target_node, layer_table, trace_model

    try:
        with torch.device("meta"):  # the layers and their shapes; no weights are made
            model = build_architecture(args.arch)
    except NotImplementedError:  # an initializer that reads values (RegNetY's)
        model = build_architecture(args.arch)
    size = args.image_size or ARCH_TABLE[args.arch][2]
    traced = trace_model(model, size)
    default = traced.name_of(default_target_node(traced))
    print(f"# {args.arch} at {size}x{size}; shapes per image; (default) marks the default target")
    for layer in layer_table(traced):
        if layer.shape is None or (args.maps_only and len(layer.shape) != 3):
            continue
        mark = "  (default)" if layer.name == default else ""
        print(f"{layer.name}\t{layer.op}\t{list(layer.shape)}{mark}")
    return EXIT_OK


HELP = "list a CNN's valid target layers with their output shapes"
DESCRIPTION = """\
Every layer of ARCH (a CNN of torchvision's registry) by the name --target-layer takes, the op
it runs and its output shape per image. Module names (layer4, features) name their block's last
layer too. Without ARCH, or with --list-archs, lists the archs.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `gradcam-fast layers`."""
    p.add_argument("arch", nargs="?", metavar="ARCH", help="a torchvision CNN, e.g. resnet50")
    p.add_argument("--image-size", type=positive, help="default: the weights' crop size")
    p.add_argument(
        "--maps-only", action="store_true", help="only feature maps [C, H, W] (valid targets)"
    )
    p.add_argument("--list-archs", action="store_true", help="list the supported archs")
