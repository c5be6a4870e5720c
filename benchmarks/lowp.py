"""int8 and bfloat16 against float32 on a CNN (random weights) at 224: speed and fidelity, one run.

    python -m benchmarks.lowp [--arch resnet50] [--batches 1 8] [--eager] [--out FILE.md]

The target is the module the other libraries hook (`BENCH_TARGETS`: `layer4` in ResNets,
`features.35` in VGG19), the same for every contender. Export times are reported.

Speed: interleaved rounds (benchmarks/interleaved.py: every round visits each contender once in
a shuffled order, one untimed call then the timed one; ratios are medians of within-round ratios)
of the float32 session, its channel-weights model, the int8 session (channel weights), the float32
ORT floor, the torch backend in float32 and bfloat16, the eager ways and the peers that are
installed (the eager hook's ratio is in RESULTS.md), at batch 1, 8 and 32 (the peers at 1
and 8 only), and the int8 session at K=5
against K=1. Every contender is checked against the eager reference first (benchmarks/contenders).

Fidelity, issue 13: the int8 and bfloat16 sessions against the float32 session on the 16 photos of
examples/images and examples/fidelity_photos, with the float32 session's top-1 class as target:
per-map Pearson correlation of `cams_lowres` (median, worst), top-1 kept. The int8 model is
calibrated on one half of the photos and judged on the other (two folds), so every figure is on
photos its calibration never saw. Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.interleaved import interleave, round_robin_ratios

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = [ROOT / "examples" / "images", ROOT / "examples" / "fidelity_photos"]
ROUNDS = {1: 7, 8: 5, 32: 2}
PEERS = ("eager_autograd", "pytorch_grad_cam", "captum", "torchcam")
PEER_MAX_BATCH = 8
# arch -> the module whose output every contender explains (the peers hook modules; these are
# the layers their documentation recommends, and gradcam_fast's defaults where a module gives
# them). Other archs: their default target.
BENCH_TARGETS = {
    "vgg19": "features.35",
    "resnet50": "layer4",
    "densenet121": "features",
    "mobilenet_v3_large": "features",
    "efficientnet_b0": "features",
    "convnext_tiny": "features",
    "regnet_y_800mf": "trunk_output",
}
SESSIONS = ("gradcam_fast", "gradcam_fast_lean", "gradcam_fast_int8", "torch_float32",
            "torch_bfloat16")  # fmt: skip


def photos(size: int = 224) -> tuple[list[str], torch.Tensor]:
    """The fidelity photos, preprocessed like `explain` does."""
    from gradcam_fast.images import load_image, preprocess

    files = sorted(p for folder in PHOTOS for p in folder.glob("*.jpg"))
    return [p.name for p in files], torch.stack([preprocess(load_image(p), size) for p in files])


def fidelity(
    model, folder: Path, images: torch.Tensor, method: str, target: str | None = None
) -> dict[str, dict]:
    """int8 (two folds) and bfloat16 against the float32 session on `images`."""
    from gradcam_fast import GradCAMSession, export_onnx
    from gradcam_fast.compare import map_correlations

    f32 = GradCAMSession(folder / "gradcam_channel_weights.onnx", device="cpu")
    ref = f32(images, -1)
    classes = ref.target_classes
    halves = [torch.arange(len(images))[i::2] for i in (0, 1)]
    int8_lowres = torch.empty_like(ref.cams_lowres)
    int8_logits = torch.empty_like(ref.logits)
    for fold, (calib, judged) in enumerate([(halves[0], halves[1]), (halves[1], halves[0])]):
        path = folder / ("gradcam_int8.onnx" if fold == 0 else "int8_fold1.onnx")
        if fold == 1:
            export_onnx(model, path, gradients=False, quantize="int8", calibration=images[calib],
                        target_layer=target,
                        calibration_method=method, validate=False)  # fmt: skip
        got = GradCAMSession(path, device="cpu")(images[judged], classes[judged])
        int8_lowres[judged], int8_logits[judged] = got.cams_lowres, got.logits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        bf16 = GradCAMSession.from_model(
            model, target_layer=target, device="cpu", precision="bfloat16"
        )(images, classes)
    out = {}
    for name, lowres, logits in [
        ("int8 (held-out folds)", int8_lowres, int8_logits),
        ("bfloat16 torch", bf16.cams_lowres, bf16.logits),
    ]:
        corr = map_correlations(lowres, ref.cams_lowres).flatten()
        out[name] = {
            "median": corr.median().item(),
            "worst": corr.min().item(),
            "per_photo": corr.tolist(),
            "top1_kept": int((logits.argmax(1) == ref.logits.argmax(1)).sum()),
        }
    return out


def speed(
    model, folder: Path, names: list[str], target: str, batches: tuple[int, ...] = tuple(ROUNDS)
) -> dict:
    """Interleaved ratios per batch size (see the module docstring)."""
    from benchmarks.contenders import (
        ContenderUnavailable,
        Setup,
        check_output,
        open_contender,
    )  # fmt: skip
    from gradcam_fast.reference import eager_gradcam

    paths = {p.stem: p for p in folder.glob("*.onnx")}
    setup = Setup(model, target, 224, paths)
    contenders = {}
    for name in names:
        try:
            contenders[name] = open_contender(name, setup)
        except ContenderUnavailable as exc:
            print(f"# {name} left out: {exc}", file=sys.stderr)
    results = {}
    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        images = torch.randn(batch, 3, 224, 224, generator=gen)
        reference = eager_gradcam(model, images, None, target)
        classes = reference.target_classes
        slow = (*PEERS, "eager_hook")
        here = [n for n in contenders if n not in slow or batch <= PEER_MAX_BATCH]
        for name in here:  # a failed check is reported, and the contender still timed
            c = contenders[name]
            try:
                check_output(name, c.output(c.run(images, classes)), reference)
            except AssertionError as exc:
                print(f"# CHECK FAILED at batch {batch}: {exc}", file=sys.stderr, flush=True)
        calls = {n: (lambda c=contenders[n], x=images, t=classes: c.run(x, t)) for n in here}
        results[batch] = round_robin_ratios(interleave(calls, ROUNDS[batch]))
        print(f"# batch {batch}: {json.dumps(results[batch])}", file=sys.stderr, flush=True)
    # K=5 against K=1 on the int8 session
    from gradcam_fast import GradCAMSession

    k1 = GradCAMSession(folder / "gradcam_int8.onnx", device="cpu")
    k5 = GradCAMSession(folder / "int8_k5.onnx", device="cpu")
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    times = interleave({"k1": lambda: k1(x), "k5": lambda: k5(x)}, 3)
    results["k5_over_k1_batch8"] = statistics.median(
        a / b for a, b in zip(times["k5"], times["k1"], strict=True)
    )
    for c in contenders.values():
        c.close()
    return results


def render(
    fid: dict, spd: dict, files: list[str], seconds: float, arch: str, exports: dict[str, float]
) -> str:
    batches = [b for b in spd if isinstance(b, int)]
    lines = [f"## Fidelity (16 photos, {arch} random weights, against the float32 session)", ""]
    lines += ["| variant | median Pearson | worst | top-1 kept |", "| --- | ---: | ---: | ---: |"]
    for name, f in fid.items():
        lines.append(f"| {name} | {f['median']:.4f} | {f['worst']:.4f} | {f['top1_kept']}/16 |")
    lines += ["", "Per photo (int8, bfloat16): " + ", ".join(
        f"{n} {a:.3f}/{b:.3f}" for n, a, b in zip(
            files, *(f["per_photo"] for f in fid.values()), strict=True)
    ), ""]  # fmt: skip
    lines += ["## Speed (interleaved; ratio = median over rounds of time / floor_ort)", ""]
    lines += ["| batch | contender | median ms | x floor | floor / it | eager hook / it |", "| ---: | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for batch in batches:
        for name, row in spd[batch].items():
            r, e = row["ratio_to_floor"], row.get("speedup_vs_eager")
            eager = "" if e is None else f"{e:.2f}x"
            lines.append(f"| {batch} | {name} | {row['median_ms']:.1f} | {r:.3f} | {1 / r:.2f}x | {eager} |")  # fmt: skip
    if all("torch_bfloat16" in spd[b] for b in batches):
        lines += ["", "bfloat16 vs float32 torch backend (median ms ratio): " + ", ".join(
            f"batch {b}: {spd[b]['torch_float32']['median_ms'] / spd[b]['torch_bfloat16']['median_ms']:.2f}x"
            for b in batches
        )]  # fmt: skip
    lines.append(f"int8 session K=5 / K=1 at batch 8: {spd['k5_over_k1_batch8']:.3f}")
    lines.append("Export times: " + ", ".join(f"{k} {v:.0f} s" for k, v in exports.items()))
    lines.append(f"\nRun took {seconds / 60:.1f} min.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lowp", description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--method", default="minmax", help="int8 calibration method")
    parser.add_argument("--arch", default="vgg19", help="a torchvision CNN (default vgg19)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(ROUNDS))
    parser.add_argument("--eager", action="store_true", help="also time the eager hook way")
    parser.add_argument("--no-torch", action="store_true", help="leave out the torch backend")
    args = parser.parse_args(argv)
    from benchmarks.contenders import export_floor, make_model
    from gradcam_fast import GradCAMSession, export_onnx
    from gradcam_fast.runtime import cpu_count

    started = time.perf_counter()
    torch.set_num_threads(cpu_count())
    model = make_model(args.arch)
    target = BENCH_TARGETS.get(args.arch)
    files, images = photos()
    calib = images[0::2]
    exports: dict[str, float] = {}

    def timed_export(name: str, **options) -> None:
        start = time.perf_counter()
        export_onnx(model, folder / f"{name}.onnx", target_layer=target, validate=False, **options)
        exports[name] = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="gradcam-lowp-") as tmp:
        folder = Path(tmp)
        timed_export("gradcam_k1")
        timed_export("gradcam_channel_weights", gradients=False)
        for name, k in (("gradcam_int8", 1), ("int8_k5", 5)):
            timed_export(name, gradients=False, num_targets=k, quantize="int8",
                         calibration=calib, calibration_method=args.method)  # fmt: skip
        export_floor(model, folder / "floor.onnx", 224)
        print(f"# exported in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        fid = fidelity(model, folder, images, args.method, target)
        print(f"# fidelity: {json.dumps(fid)}", file=sys.stderr, flush=True)  # partial runs
        sessions = [s for s in SESSIONS if not (args.no_torch and s.startswith("torch_"))]
        names = [*sessions, "floor_ort", *PEERS, *(["eager_hook"] if args.eager else [])]
        target = target or GradCAMSession(folder / "gradcam_k1.onnx", "cpu").metadata.target_layer
        spd = speed(model, folder, names, target, tuple(args.batches))
    report = render(fid, spd, files, time.perf_counter() - started, args.arch, exports)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
