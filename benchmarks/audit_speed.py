"""The audit's speed: `python -m benchmarks.audit_speed [--arch resnet50] [--int8] [--tiny]` (VGG19,
or `--arch`, at 224, random weights). Prints a markdown report and one JSON line.

1. Deletion + insertion with S steps through the session against the floor (the plain model in
   ONNX Runtime) on as many images: image-steps per second, interleaved rounds. Target >= 0.9.
2. The whole audit against the same metrics in the peers, timed once each: deletion, insertion
   and drop against TorchCAM's DeletionInsertionMetric + ClassificationMetric, ROAD against
   pytorch-grad-cam's ROADCombined, with each pair's means side by side (each library's own
   maps: close, not equal). The peers' maps are Grad-CAM of the class logit, as ours and the
   Grad-CAM paper (`softmax_scores`, `ClassifierOutputTarget`); their metrics score softmax
   probabilities, as ours. Target >= 10x.
3. With `--int8`: our two audits in ONNX Runtime's int8 session (calibrated on 8 other images)
   against the float32 session's, interleaved rounds (medians of within-round ratios; seconds
   are medians too). Target >= 2.5x.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import cpu
from benchmarks.timing import interleave, median_ratio

__all__ = ["main", "softmax_scores"]

PERTURBATION = ["deletion", "insertion", "drop"]  # the metrics timed against TorchCAM's


def softmax_scores(logits):
    """Softmax probabilities whose gradient is the logits' (straight-through): TorchCAM's
    extractor backpropagates the very scores its metrics read, so a plain softmax as `logits_fn`
    would give Grad-CAM of the probability, which is not the logit's map (ours, and Grad-CAM's
    y^c "before the softmax") once the probabilities are peaked: on seeded ResNet-50 (top-1
    about 0.9) the two maps correlate about -0.2 and every mean differs."""
    import torch

    return torch.softmax(logits, -1).detach() + (logits - logits.detach())


def _pictures(n: int, size: int, seed: int) -> list:
    import torch
    from PIL import Image

    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, size + size // 7, size + size // 3, 3), generator=gen)
    return [Image.fromarray(p.to(torch.uint8).numpy()) for p in pixels]


def _decoded(session, pictures: list):
    """`pictures` decoded and preprocessed as the audit does for `session`, stacked."""
    import torch

    from gradcam_fast.audit.api import decode_image

    return torch.stack([decode_image(im, session.metadata).tensor for im in pictures])


def _target(model, arch: str) -> str:
    """The target layer: the module the peers' documentation recommends (`lowp.BENCH_TARGETS`,
    a module they can hook), else our default."""
    from benchmarks.lowp import BENCH_TARGETS
    from gradcam_fast.model.layer_names import default_target_layer

    return BENCH_TARGETS.get(arch) or default_target_layer(model)


def _setup(arch: str, folder: Path, n: int, seed: int = 0):
    from benchmarks.contenders import export_floor, make_model
    from gradcam_fast import GradCAMSession, export_onnx

    model = make_model(arch)
    size = 32 if arch == "tiny" else 224
    path = export_onnx(
        model,
        folder / "gc.onnx",
        target_layer=_target(model, arch),
        image_size=size,
        channel_weights_only=True,
        validate=False,
    )
    floor = export_floor(model, folder / "floor.onnx", size)
    return model, size, GradCAMSession(path, device="cpu"), floor, _pictures(n, size, seed)


def own_audits(session, images, steps: int, batch: int) -> tuple[float, float, list, list]:
    """Seconds of our deletion + insertion + drop audit and of our ROAD audit, and their rows."""
    from gradcam_fast.audit import audit

    start = time.perf_counter()
    rows = audit(session, images, metrics=PERTURBATION, steps=steps, batch_size=batch)
    middle = time.perf_counter()
    road_rows = audit(session, images, metrics=["road"], batch_size=batch)
    return middle - start, time.perf_counter() - middle, rows, road_rows


def int8_audits(session, images, steps: int, batch: int, rounds: int) -> dict:
    """Part 3: our two audits in int8 against float32, interleaved rounds (each round runs the
    four audits once, shuffled); ratios are medians of the within-round ratios."""
    from gradcam_fast import GradCAMSession
    from gradcam_fast.audit import audit

    calibration = _decoded(session, _pictures(8, session.metadata.image_size, 99))
    int8 = GradCAMSession(session.path, device="cpu", precision="int8", calibration=calibration)

    def run(s, metrics, **kw):
        return lambda: audit(s, images, metrics=metrics, batch_size=batch, **kw)

    times = interleave(
        {
            "float32_del_ins_drop": run(session, PERTURBATION, steps=steps),
            "int8_del_ins_drop": run(int8, PERTURBATION, steps=steps),
            "float32_road": run(session, ["road"]),
            "int8_road": run(int8, ["road"]),
        },
        rounds,
        warm=0,
    )
    whole = {  # the whole audit of each round: both parts added
        p: [sum(pair) for pair in zip(times[f"{p}_del_ins_drop"], times[f"{p}_road"], strict=True)]
        for p in ("float32", "int8")
    }
    return {
        **{f"{name}_s": statistics.median(ts) for name, ts in times.items()},
        "speedup_del_ins_drop": median_ratio(
            times["float32_del_ins_drop"], times["int8_del_ins_drop"]
        ),
        "speedup_road": median_ratio(times["float32_road"], times["int8_road"]),
        "speedup_whole": median_ratio(whole["float32"], whole["int8"]),
        "rounds": rounds,
    }


def throughput(session, floor_path, images, steps: int, batch: int, rounds: int) -> dict:
    """Part 1: image-steps/s of deletion + insertion against the floor's images/s."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from gradcam_fast.audit.core import session_scorer
    from gradcam_fast.audit.faithfulness import deletion_insertion
    from gradcam_fast.runtime.ort_backend import session_options

    x = _decoded(session, images)
    result = session(x, None)
    cams, classes = result.cams[:, 0], result.target_classes[:, 0]
    p0 = torch.softmax(result.logits, 1).gather(1, classes[:, None])[:, 0]
    score = session_scorer(session, batch)
    per_image = 2 * steps - 1
    floor = ort.InferenceSession(
        str(floor_path), session_options(), providers=["CPUExecutionProvider"]
    )
    stack = x.repeat_interleave(per_image, 0).numpy()

    def floor_run():
        for i in range(0, len(stack), batch):
            floor.run(None, {"images": np.ascontiguousarray(stack[i : i + batch])})

    def ours():
        deletion_insertion(score, x, cams, classes, p0, steps=steps, batch_size=batch)

    times = interleave({"deletion_insertion": ours, "floor_ort": floor_run}, rounds, warm=0)
    work = len(images) * per_image
    return {
        "image_steps": work,
        "ours_image_steps_per_s": work / statistics.median(times["deletion_insertion"]),
        "floor_images_per_s": work / statistics.median(times["floor_ort"]),
        "ratio": median_ratio(times["floor_ort"], times["deletion_insertion"]),
        "rounds": rounds,
    }


def peers(model, layer: str, session, images, steps: int, batch: int) -> dict:
    """Part 2: the audit against TorchCAM and pytorch-grad-cam (hooking the module `layer`),
    once each, with their means."""
    import torch
    from torchcam.methods import GradCAM
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

    from gradcam_fast.audit.faithfulness import baseline_images

    x = _decoded(session, images)
    out: dict = {}
    out["ours_del_ins_drop_s"], out["ours_road_s"], rows, road_rows = own_audits(
        session, images, steps, batch
    )
    start = time.perf_counter()
    extractor = GradCAM(model, layer)
    di = DeletionInsertionMetric(
        extractor, softmax_scores, steps=steps, batch_size=batch, baseline=baseline_images
    )
    cm = ClassificationMetric(extractor, softmax_scores)
    for i in range(len(x)):
        di.update(x[i : i + 1])
        cm.update(x[i : i + 1])
    out["torchcam_del_ins_drop_s"] = time.perf_counter() - start
    extractor.remove_hooks()
    from pytorch_grad_cam import GradCAM as PgcGradCAM
    from pytorch_grad_cam.metrics.road import ROADCombined
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    start = time.perf_counter()
    cam = PgcGradCAM(model=model, target_layers=[dict(model.named_modules())[layer]])
    with torch.no_grad():
        top = model(x).argmax(1).tolist()
    # the map of the logit (as ours), ROAD on the softmax probability (as ours)
    maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in top])
    pgc_road = ROADCombined()(x, maps, [ClassifierOutputSoftmaxTarget(c) for c in top], model)
    out["pgc_road_s"] = time.perf_counter() - start
    mean = lambda key, rs: statistics.mean(r[key] for r in rs)  # noqa: E731
    di_sum, cm_sum = di.summary(), cm.summary()
    out["means"] = {
        "deletion": (mean("deletion", rows), di_sum["deletion_auc"]),
        "insertion": (mean("insertion", rows), di_sum["insertion_auc"]),
        "drop": (mean("drop", rows), cm_sum["avg_drop"]),
        "road": (mean("road", road_rows), float(pgc_road.mean())),
    }
    out["speedup_del_ins_drop"] = out["torchcam_del_ins_drop_s"] / out["ours_del_ins_drop_s"]
    out["speedup_road"] = out["pgc_road_s"] / out["ours_road_s"]
    return out


def main(argv: list[str] | None = None) -> dict:
    import torch

    from gradcam_fast.runtime.session import cpu_count

    parser = argparse.ArgumentParser(prog="python -m benchmarks.audit_speed", description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="the tiny VGG at 32 (a quick check)")
    parser.add_argument("--arch", default="vgg19", help="a torchvision CNN (default vgg19)")
    parser.add_argument("--int8", action="store_true", help="also our audits in int8 (part 3)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-peers", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        arch = "tiny" if args.tiny else args.arch
        model, size, session, floor, images = _setup(arch, Path(tmp), args.images)
        figures = {"cpu": cpu(), "model": arch, "size": size}
        figures["throughput"] = throughput(
            session, floor, images, args.steps, args.batch, args.rounds
        )
        if not args.no_peers:
            layer = _target(model, arch)
            figures["peers"] = peers(model, layer, session, images, args.steps, args.batch)
        if args.int8:
            figures["int8"] = int8_audits(session, images, args.steps, args.batch, args.rounds)
    t = figures["throughput"]
    print(f"| {figures['model']} {size} | deletion+insertion S={args.steps}, batch {args.batch} | "
          f"{t['ours_image_steps_per_s']:.1f} image-steps/s | floor {t['floor_images_per_s']:.1f} "
          f"images/s | ratio {t['ratio']:.3f} ({t['rounds']} rounds) |")  # fmt: skip
    if "peers" in figures:
        p = figures["peers"]
        print(f"| deletion+insertion+drop | ours {p['ours_del_ins_drop_s']:.1f} s | TorchCAM "
              f"{p['torchcam_del_ins_drop_s']:.1f} s | {p['speedup_del_ins_drop']:.2f}x |")  # fmt: skip
        print(f"| ROAD (9 fractions x 2 orders) | ours {p['ours_road_s']:.1f} s | pytorch-grad-cam "
              f"{p['pgc_road_s']:.1f} s | {p['speedup_road']:.2f}x |")  # fmt: skip
        print("| means (ours, peer) | " + json.dumps(p["means"]) + " |")
    if "int8" in figures:
        q = figures["int8"]
        print(f"| int8 / float32, ours | deletion+insertion+drop {q['int8_del_ins_drop_s']:.1f} s / "
              f"{q['float32_del_ins_drop_s']:.1f} s: {q['speedup_del_ins_drop']:.2f}x | ROAD "
              f"{q['int8_road_s']:.1f} s / {q['float32_road_s']:.1f} s: {q['speedup_road']:.2f}x | "
              f"whole audit {q['speedup_whole']:.2f}x ({q['rounds']} rounds) |")  # fmt: skip
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
    sys.exit(0)
