"""`gradcam-fast sweep`: every CNN's Grad-CAM graph against the eager reference (autograd), as a
table."""

from __future__ import annotations

import argparse

from .options import EXIT_OK, EXIT_SOME_FAILED, positive

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    from ..check.sweep import sweep_model
    from ..model.catalog import ARCH_TABLE, ARCHS
    from ..model.loading import _check_arch

    archs = args.archs or sorted(ARCHS)
    for arch in archs:
        _check_arch(arch)
    print("| arch | target | layer | max relative error | result | seconds |")
    print("| --- | --- | --- | ---: | --- | ---: |")
    failed = 0
    for arch in archs:
        size = args.image_size or ARCH_TABLE[arch][2]
        for row in sweep_model(arch, size, batch=args.batch):
            failed += not row.ok
            result = "ok" if row.ok else f"FAILED {row.note}".strip()
            print(
                f"| {arch} | {row.kind} | `{row.target}` | {row.error:.1e} | {result} | "
                f"{row.seconds:.1f} |",
                flush=True,
            )
    return EXIT_SOME_FAILED if failed else EXIT_OK


HELP = "check Grad-CAM graphs of the CNNs against autograd (random weights)"
DESCRIPTION = """\
For each ARCH (default: all 68 CNNs), on seeded random weights, builds the Grad-CAM graph at the
default target, at a layer inside the last stage's blocks and at the stage before, and compares
logits, activations, gradients and maps with autograd on the unmodified model (relative error
under 1e-4). Prints a markdown table; exit status 1 if any failed.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `gradcam-fast sweep`."""
    p.add_argument("archs", nargs="*", metavar="ARCH", help="archs to check (default: all)")
    p.add_argument("--image-size", type=positive, help="default: each arch's weights' crop size")
    p.add_argument("--batch", type=positive, default=2, help="images per check (default 2)")
