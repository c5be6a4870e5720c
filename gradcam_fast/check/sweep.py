"""The model sweep: every torchvision CNN's Grad-CAM graph against the eager reference (autograd).

For each arch, on seeded random weights, three targets: the default (the last stage's output),
one inside the last stage's blocks (a residual or inverted-residual block's inner layer: the
head then runs convolutions, normalizations and the block's skip backward), and the last
layer of the stage before (the head then spans a whole stage). Each is checked with
`compare.compare_with_reference` against `eager_gradcam` (relative error under 1e-4).
`gradcam-fast sweep` runs it and prints the table docs/models.md shows.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import torch

from ..model.trace import TracedModel, default_target_node, trace_model
from .compare import LIMITS, compare_with_reference, failing_figures

__all__ = ["SweepRow", "sweep_model", "sweep_targets"]


@dataclass
class SweepRow:
    """One arch at one target: the worst relative error and whether every figure passed."""

    arch: str
    kind: str  # "default", "inside", "earlier"
    target: str
    error: float  # the largest figure judged in float32 (NaN-proof: inf when not finite)
    ok: bool
    seconds: float
    note: str = ""


def _spatial(traced: TracedModel, node) -> tuple[int, int] | None:
    shape = traced.shape_of(node)
    return (shape[2], shape[3]) if shape is not None and len(shape) == 4 else None


def sweep_targets(traced: TracedModel) -> dict[str, str]:
    """{"default", "inside", "earlier"} -> node names (fewer where a model has no such layer)."""
    nodes = traced.nodes
    default = default_target_node(traced)
    targets = {"default": traced.name_of(default)}
    size = _spatial(traced, default)
    index = nodes.index(default)
    kinds = {"call_module", "call_function", "call_method"}
    candidates = [
        i for i, n in enumerate(nodes[:index]) if n.op in kinds and _spatial(traced, n) is not None
    ]
    same = [i for i in candidates if _spatial(traced, nodes[i]) == size]
    if same:  # the last stage starts at its first node of the default's size; halfway into it
        stage_start = same[0]
        inside = [i for i in same if i > stage_start]
        if inside:
            pick = inside[len(inside) // 2]
            targets["inside"] = traced.name_of(nodes[pick])
        earlier = [i for i in candidates if i < stage_start and _spatial(traced, nodes[i]) > size]
        if earlier:
            targets["earlier"] = traced.name_of(nodes[earlier[-1]])
    return targets


def sweep_model(
    arch: str | torch.nn.Module,
    image_size: int = 224,
    batch: int = 2,
    num_targets: int = 2,
    seed: int = 0,
) -> list[SweepRow]:
    """Check the graph of `arch` (a torchvision name, on seeded random weights, or any
    classifier module in eval mode, a timm CNN for one) at each of `sweep_targets` against the
    eager reference, in float32."""
    from ..cams.postprocess import gradcam_lowres
    from ..core.graph import GradCAMGraph
    from ..format.result import GradCAMResult
    from ..model.loading import load_model
    from .reference import eager_gradcam

    if isinstance(arch, str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(arch, "random", seed=seed)
    else:
        model, arch = arch, type(arch).__name__
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, image_size, image_size, generator=gen)
    targets = torch.randint(0, 1000, (batch, num_targets), generator=gen)
    targets[0] = torch.arange(-1, -num_targets - 1, -1)
    rows = []
    for kind, name in sweep_targets(trace_model(model, image_size)).items():
        started = time.perf_counter()
        try:
            graph = GradCAMGraph(model, name, num_targets, image_size=image_size)
            with torch.no_grad():
                logits, classes, activations, gradients = graph(images, targets)
            ref = eager_gradcam(model, images, targets, name)
        except Exception as exc:  # reported in the table, the sweep goes on
            rows.append(SweepRow(arch, kind, name, float("inf"), False, 0.0, str(exc)[:200]))
            continue
        got = GradCAMResult.from_lowres(
            gradcam_lowres(activations, gradients),
            image_size,
            target_classes=classes,
            logits=logits,
            activations=activations,
            gradients=gradients,
        )
        errors = compare_with_reference(got, ref)
        judged = {k: v for k, v in errors.items() if k in LIMITS["float32"] and "share" not in k}
        ok = not failing_figures(errors) and torch.equal(classes, ref.target_classes)
        worst = max(judged.values(), key=lambda v: v if v == v else float("inf"))
        rows.append(SweepRow(arch, kind, name, worst, ok, time.perf_counter() - started))
    return rows
