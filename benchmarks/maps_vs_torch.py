"""In-graph maps (export_onnx(..., maps=True)) against the session's torch post-processing.

    python -m benchmarks.maps_vs_torch                   # VGG19 random weights, 224, batch 1 and 8
    python -m benchmarks.maps_vs_torch --tiny            # a small VGG at 32: checks the script

1. `postprocess`: the maps part alone (low-resolution maps, bilinear upsampling, min-max) as an
   ONNX graph of its own in ONNX Runtime, against the same functions in torch, on activations
   and gradients of real session runs; many rounds, interleaved.
2. `session`: whole session calls of the model exported with maps and without (torch computes
   them), each session opened `--blocks` times in turn (one network in memory at a time).

Both ways' maps are compared in the same run (relative error under 1e-4, or the run fails).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from benchmarks.checks import check_agreement
from benchmarks.contenders import export_plain, make_model
from benchmarks.machine import cpu
from benchmarks.tables import markdown_table
from benchmarks.timing import time_calls
from gradcam_fast import GradCAMSession, export_onnx
from gradcam_fast.cams.methods import cam_lowres
from gradcam_fast.cams.postprocess import upsample_normalize
from gradcam_fast.runtime.cpu_choice import cpu_count
from gradcam_fast.runtime.ort_backend import session_options

__all__ = ["main"]


class _MapsOnly(nn.Module):
    """activations [B,C,h,w], gradients [B,K,C,h,w] -> cams, cams_lowres: the in-graph part."""

    def __init__(self, method: str, image_size: int):
        super().__init__()
        self.method, self.image_size = method, image_size

    def forward(self, activations: torch.Tensor, gradients: torch.Tensor):
        lowres = cam_lowres(self.method, activations, gradients)
        return upsample_normalize(lowres, self.image_size), lowres


def _postprocess(activations, gradients, method, size, rounds, folder: Path) -> dict:
    """Median seconds of the maps part in ONNX Runtime and in torch, interleaved, same inputs."""
    import onnxruntime as ort

    path = export_plain(_MapsOnly(method, size), (activations, gradients), folder / "maps_only.onnx",
                        ["activations", "gradients"], ["cams", "cams_lowres"])  # fmt: skip
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    feeds = {"activations": activations.numpy(), "gradients": gradients.numpy()}
    in_graph = torch.from_numpy(session.run(["cams"], feeds)[0])
    with torch.no_grad():
        in_torch = _MapsOnly(method, size)(activations, gradients)[0]
    error = check_agreement("the maps-only graph and torch", in_graph, in_torch)
    ort_times, torch_times = [], []
    with torch.no_grad():
        for _ in range(rounds):
            ort_times += time_calls(lambda: session.run(None, feeds), 1)
            torch_times += time_calls(lambda: _MapsOnly(method, size)(activations, gradients), 1)
    return {
        "onnxruntime": statistics.median(ort_times),
        "torch": statistics.median(torch_times),
        "error": error,
    }


def _session_blocks(
    paths: dict, inputs: dict, method: str, rounds: int, blocks: int
) -> tuple[dict, dict]:
    """Median seconds per call by (model kind, batch), each session opened `blocks` times in
    turn, and the relative error between the two kinds' maps per batch."""
    times: dict = {}
    reference = {}
    for _ in range(blocks):
        for kind, path in paths.items():
            session = GradCAMSession(path, device="cpu")
            for batch, x in inputs.items():
                result = session(x, method=method)  # warm-up; its maps are checked below
                reference.setdefault((kind, batch), result.cams)
                timed = time_calls(lambda s=session, x=x: s(x, method=method), rounds)
                times.setdefault((kind, batch), []).extend(timed)
            del session
            gc.collect()
    errors = {}
    for batch in inputs:
        what = f"in-graph and torch maps at batch {batch}"
        errors[batch] = check_agreement(what, reference["maps", batch], reference["torch", batch])
    return {key: statistics.median(values) for key, values in times.items()}, errors


def main(argv: list[str] | None = None) -> dict:
    """Run both measurements, print a markdown report, return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a small VGG at 32 (checks the script)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=None, help="timed calls per block")
    parser.add_argument("--blocks", type=int, default=2, help="times each session is opened")
    parser.add_argument("--method", default="gradcam")
    args = parser.parse_args(argv)
    model = make_model("tiny" if args.tiny else "vgg19")
    size, name = (32, "tiny VGG") if args.tiny else (224, "VGG19 (random weights)")
    rounds = args.rounds or (2 if args.tiny else 5)
    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, 3, size, size, generator=gen) for b in args.batches}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = {}
        for kind in ("torch", "maps"):
            maps = kind == "maps"
            method = args.method if maps else None
            path = folder / f"{kind}.onnx"
            paths[kind] = export_onnx(
                model, path, image_size=size, maps=maps, validate=False, method=method
            )
        del model
        gc.collect()
        post = {}
        session = GradCAMSession(paths["torch"], device="cpu")
        for batch, x in inputs.items():
            result = session(x, method=args.method)
            post[batch] = _postprocess(
                result.activations, result.gradients, args.method, size, 20 * rounds, folder
            )
        del session, result
        gc.collect()
        calls, session_errors = _session_blocks(paths, inputs, args.method, rounds, args.blocks)
    load_after = os.getloadavg()

    print(f"# In-graph maps vs torch post-processing ({name}, {size}x{size}, {args.method}, K=1)")
    print(f"\n{cpu()['model']}, {cpu_count()} cores, torch {torch.__version__}, load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after\n")  # fmt: skip
    rows = []
    for b in inputs:
        ort_ms, torch_ms = post[b]["onnxruntime"] * 1e3, post[b]["torch"] * 1e3
        maps_ms, own_ms = calls[("maps", b)] * 1e3, calls[("torch", b)] * 1e3
        rows.append((b, ort_ms, torch_ms, ort_ms / torch_ms, maps_ms, own_ms, maps_ms / own_ms))
    header = (
        "batch | maps part: ORT ms | maps part: torch ms | ORT / torch | session with in-graph "
        "maps ms | session + torch ms | in-graph / torch"
    )
    row = "{} | {:.3f} | {:.3f} | {:.2f} | {:.1f} | {:.1f} | {:.3f}"
    print("\n".join(markdown_table(header, "lllllll", row, rows)))
    errors = ", ".join(
        f"batch {b}: maps part {post[b]['error']:.1e}, session {session_errors[b]:.1e}"
        for b in inputs
    )
    print(f"\nMaps agreement (relative error, in-graph vs torch): {errors}")
    return {"postprocess": post, "session": calls, "session_errors": session_errors}


if __name__ == "__main__":
    main()
