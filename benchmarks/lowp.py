"""int8 and bfloat16 against float32 on VGG19 (random weights) at 224: speed and fidelity, one run.

    python -m benchmarks.lowp [--out benchmarks/results/lowp.md]

Speed: interleaved rounds (benchmarks.interleaved) of the float32 session, its channel-weights
model, the int8 session, the ORT floor, the torch backend in float32 and bfloat16, the eager ways
and the installed peers, at batch 1, 8 and 32 (the peers at 1 and 8), each checked against the
eager reference first; and K=5 against K=1.

Fidelity (issue 13): the int8 and bfloat16 sessions against the float32 session on the 16 photos
of examples/, the float32 top-1 class as target: per-map Pearson correlation of `cams_lowres`
(median, worst) and top-1 kept. int8 is calibrated on one half of the photos and judged on the
other (two folds). Prints markdown.

OpenVINO (issue 21, with the `openvino` extra): the session on OpenVINO in float32, bf16 and NNCF
int8, ONNX Runtime on NNCF's QDQ file, a bare OpenVINO call, the THROUGHPUT hint; their fidelity
and the start-up times. `--contenders` and `--batches` narrow a run, `--no-peers` leaves out the
other libraries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from benchmarks.contenders import ALIASES, PEERS, SESSIONS
from benchmarks.photos import fidelity_photos
from benchmarks.tables import markdown_table
from benchmarks.timing import interleave, median_ratio
from gradcam_fast.runtime.cpu_choice import openvino_installed

ROUNDS = {1: 7, 8: 5, 32: 2}
# arch -> the module every contender explains (the peers hook modules): the layers their
# documentation recommends; other archs get their default target.
BENCH_TARGETS = {"vgg19": "features.35", "resnet50": "layer4", "regnet_y_800mf": "trunk_output"}
BENCH_TARGETS |= dict.fromkeys(
    ("densenet121", "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny"), "features"
)
# what refused to be made, and why (the int8 files whose maps are beyond the int8 limits on the
# calibration photos): reported, and the runs that need them left out
REFUSED: dict[str, str] = {}
OPENVINO = ("openvino_float32", "openvino_full_float32", "openvino_bfloat16",
            "openvino_full_bfloat16", "openvino_int8", "openvino_full_int8", "ort_qdq_int8",
            "openvino_bare", "openvino_throughput")  # fmt: skip


def nncf_int8(source: Path, out: Path, calibration: torch.Tensor) -> Path:
    """The NNCF int8 file of `source` (int8_cache: made, validated, cached), moved to `out`."""
    from gradcam_fast import GradCAMSession
    from gradcam_fast.format.onnx_props import file_metadata
    from gradcam_fast.runtime.int8_cache import int8_model

    made = int8_model(source, file_metadata(source), "openvino", calibration,
                      open_session=lambda f, **kw: GradCAMSession(f, device="cpu", **kw))  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    made.replace(out)
    return out


def fidelity(
    model, folder: Path, images: torch.Tensor, method: str, target: str | None = None
) -> dict[str, dict]:
    """int8 (two folds) and bfloat16 against the float32 session on `images`."""
    from gradcam_fast import GradCAMSession, export_onnx
    from gradcam_fast.check.compare import map_correlations

    f32 = GradCAMSession(folder / "gradcam_channel_weights.onnx", device="cpu")
    ref = f32(images, -1)
    classes = ref.target_classes
    halves = [torch.arange(len(images))[i::2] for i in (0, 1)]

    def folds(first: Path, second: Path, **options) -> tuple[torch.Tensor, torch.Tensor]:
        """Maps and logits of each half from the int8 file calibrated on the other half."""
        lowres, logits = torch.empty_like(ref.cams_lowres), torch.empty_like(ref.logits)
        for path, judged in ((first, halves[1]), (second, halves[0])):
            got = GradCAMSession(path, device="cpu", **options)(images[judged], classes[judged])
            lowres[judged], logits[judged] = got.cams_lowres, got.logits
        return lowres, logits

    fold1 = folder / "int8_fold1.onnx"
    export_onnx(model, fold1, channel_weights_only=True, precision="int8", calibration=images[halves[1]],
                calibration_method=method, validate=False, target_layer=target)  # fmt: skip
    int8_lowres, int8_logits = folds(folder / "gradcam_int8.onnx", fold1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        bf16 = GradCAMSession.from_model(
            model, target_layer=target, device="cpu", precision="bfloat16"
        )(images, classes)
    rows = [
        ("int8 (held-out folds)", int8_lowres, int8_logits),
        ("bfloat16 torch", bf16.cams_lowres, bf16.logits),
    ]
    if openvino_installed():  # the NNCF int8 rows only where NNCF's file was not refused
        cw = folder / "gradcam_channel_weights.onnx"
        ov = GradCAMSession(cw, device="cpu", backend="openvino", precision="bfloat16")
        got = ov(images, classes)
        rows.append(("bfloat16 OpenVINO", got.cams_lowres, got.logits))
        fold1 = folder / "extra" / "ov_int8_fold1.onnx"
        if (folder / "gradcam_ov_int8.onnx").is_file() and not _refused(
            "OpenVINO NNCF int8", nncf_int8, cw, fold1, images[halves[1]]
        ):
            lowres, logits = folds(folder / "gradcam_ov_int8.onnx", fold1, backend="openvino")
            rows.append(("int8 OpenVINO NNCF (held-out folds)", lowres, logits))
    out = {}
    for name, lowres, logits in rows:
        corr = map_correlations(lowres, ref.cams_lowres).flatten()
        out[name] = {
            "median": corr.median().item(),
            "worst": corr.min().item(),
            "per_photo": corr.tolist(),
            "top1_kept": int((logits.argmax(1) == ref.logits.argmax(1)).sum()),
        }
    return out


def speed(
    model, folder: Path, names: list[str], batches: list[int], target: str | None = None
) -> dict[str, dict]:
    """Interleaved ratios per batch size (see the module docstring)."""
    from benchmarks.contenders import Setup
    from benchmarks.interleaved import rounds_by_batch

    setup = Setup.from_folder(model, folder, 224, target)
    slow = (*PEERS, "eager_hook")
    results = rounds_by_batch(setup, names, batches, ROUNDS.__getitem__, slow, strict=False)
    # K=5 against K=1 at batch 8, float32 and int8 sessions (the files lowp exported)
    from gradcam_fast import GradCAMSession

    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    for label, k1_file, k5_file in (("float32", "gradcam_k1", "gradcam_k5"),
                                    ("int8", "gradcam_int8", "int8_k5")):  # fmt: skip
        if not (folder / f"{k5_file}.onnx").is_file():
            continue
        k1 = GradCAMSession(folder / f"{k1_file}.onnx", device="cpu")
        k5 = GradCAMSession(folder / f"{k5_file}.onnx", device="cpu")
        times = interleave({"k1": lambda s=k1: s(x), "k5": lambda s=k5: s(x)}, 3)
        results[f"k5_over_k1_batch8_{label}"] = median_ratio(times["k5"], times["k1"])
    return results


def nncf_files(folder: Path, calib: torch.Tensor, validated: bool) -> None:
    """OpenVINO's int8 files of the channel-weights and full exports (validated and cached
    through int8_cache, or written directly), and the channel-weights one with the head's
    weights in int8 too (`head_weights=True`), for the comparison."""
    from gradcam_fast.format.onnx_props import file_metadata
    from gradcam_fast.runtime.int8_cache import write_int8

    cw = folder / "gradcam_channel_weights.onnx"
    for src, out in ((cw, "gradcam_ov_int8"), (folder / "gradcam_k1.onnx", "gradcam_ov_int8_full")):
        if validated:
            _refused("OpenVINO NNCF int8", nncf_int8, src, folder / f"{out}.onnx", calib)
        else:
            write_int8(src, folder / f"{out}.onnx", file_metadata(src), "openvino", calib)
    write_int8(cw, folder / "gradcam_ov_int8_head_int8.onnx", file_metadata(cw), "openvino", calib,
               head_weights=True)  # fmt: skip


def start_times(folder: Path, calib: torch.Tensor) -> dict[str, float]:
    """Seconds to start a session on the channel-weights file and make its first batch-1 call:
    ONNX Runtime; OpenVINO without its compile cache, with an empty cache (it fills it), from
    the cache; and the NNCF int8 file's making (quantization and validation)."""
    from gradcam_fast import GradCAMSession

    cw = folder / "gradcam_channel_weights.onnx"
    x = torch.randn(1, 3, 224, 224)
    out = {}
    for name, options in [
        ("ort_start", {}),
        ("openvino_start_no_cache", {"backend": "openvino", "compile_cache": False}),
        ("openvino_start_filling_cache", {"backend": "openvino"}),
        ("openvino_start_from_cache", {"backend": "openvino"}),
    ]:
        start = time.perf_counter()
        session = GradCAMSession(cw, device="cpu", **options)
        out[name] = time.perf_counter() - start
        session(x)
        out[name.replace("start", "start+first_call")] = time.perf_counter() - start
        del session
    start = time.perf_counter()
    if _refused("OpenVINO NNCF int8", nncf_int8, cw, folder / "extra" / "startup_int8.onnx", calib):
        return out
    out["nncf_int8_made"] = time.perf_counter() - start
    return out


def _refused(what: str, make, *args, **kwargs) -> bool:
    """Run `make`; True (and the reason kept in REFUSED) where it refused the int8 file."""
    from gradcam_fast.export.validate import ExportValidationError
    from gradcam_fast.runtime.int8_cache import Int8ValidationError

    try:
        make(*args, **kwargs)
    except (Int8ValidationError, ExportValidationError) as exc:
        REFUSED.setdefault(what, str(exc).split(" is beyond", 1)[-1][:400])
        print(f"# {what} refused: {exc}", file=sys.stderr, flush=True)
        return True
    return False


def render(fid: dict, spd: dict, files: list[str], seconds: float, arch: str = "vgg19") -> str:
    """The markdown report: fidelity, speed, export and start-up times, what was refused."""
    lines: list[str] = []
    if fid:
        title = f"## Fidelity (16 photos, {arch} random weights, against the float32 session)"
        header = "variant | median Pearson | worst | top-1 kept"
        row = "{0} | {1[median]:.4f} | {1[worst]:.4f} | {1[top1_kept]}/16"
        per_photo = zip(files, *(f["per_photo"] for f in fid.values()), strict=True)
        photos = ", ".join(f"{n} " + "/".join(f"{c:.3f}" for c in cs) for n, *cs in per_photo)
        table = markdown_table(header, "lrrr", row, fid.items())
        lines += [title, "", *table, "", f"Per photo ({', '.join(fid)}): {photos}", ""]
    lines += ["## Speed (interleaved; ratio = median over rounds of time / floor_ort)", ""]
    batches = [b for b in ROUNDS if b in spd]
    rows = [
        {"batch": b, "name": n, "r": 1 / r["ratio_to_floor"], **r}
        for b in batches
        for n, r in spd[b].items()
    ]
    header = "batch | contender | median ms | x floor | floor / it"
    row = "{batch} | {name} | {median_ms:.1f} | {ratio_to_floor:.3f} | {r:.2f}x"
    lines += markdown_table(header, "rlrrr", row, rows)
    if all({"torch_float32", "torch_bfloat16"} <= set(spd[b]) for b in batches):
        ms = {
            b: (spd[b]["torch_float32"]["median_ms"], spd[b]["torch_bfloat16"]["median_ms"])
            for b in batches
        }
        ratios = ", ".join(f"batch {b}: {f32 / bf16:.2f}x" for b, (f32, bf16) in ms.items())
        lines += ["", f"bfloat16 vs float32 torch backend (median ms ratio): {ratios}"]
    for label in ("float32", "int8"):
        if (ratio := spd.get(f"k5_over_k1_batch8_{label}")) is not None:
            lines.append(f"{label} session K=5 / K=1 at batch 8: {ratio:.3f}")
    for key, title, digits in (("export_s", "Export", 1), ("startup", "Start-up", 2)):
        if key in spd:
            times = ", ".join(f"{k} {v:.{digits}f}" for k, v in spd[key].items())
            lines += ["", f"{title} (s): {times}"]
    for what, why in REFUSED.items():
        lines += ["", f"Refused: {what} (beyond the int8 limits on the calibration photos): {why}"]
    lines.append(f"\nRun took {seconds / 60:.1f} min.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lowp", description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--method", default="minmax", help="int8 calibration method")
    parser.add_argument("--arch", default="vgg19", help="a torchvision CNN (BENCH_TARGETS)")
    parser.add_argument("--batches", default="1,8,32", help="batch sizes, comma-separated")
    parser.add_argument("--contenders", help="comma-separated names (default: all)")
    parser.add_argument("--no-peers", action="store_true", help="leave out the other libraries")
    parser.add_argument("--no-speed", action="store_true", help="fidelity and start-up only")
    parser.add_argument("--rounds", type=int, help="rounds at every batch size (default: ROUNDS)")
    parser.add_argument(
        "--speed-only", action="store_true", help="no fidelity, no start-up times, no int8 exports"
    )
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    if args.rounds:
        ROUNDS.update(dict.fromkeys(batches, args.rounds))
    names = [*SESSIONS, "floor_ort", *(OPENVINO if openvino_installed() else ())]
    names += [] if args.no_peers else list(PEERS)
    if args.contenders:
        names = [ALIASES.get(n, n) for n in args.contenders.split(",")] + ["floor_ort"]
    from benchmarks.contenders import export_floor, make_model
    from gradcam_fast import export_onnx
    from gradcam_fast.runtime.session import cpu_count

    started = time.perf_counter()
    torch.set_num_threads(cpu_count())
    model = make_model(args.arch)
    target = BENCH_TARGETS.get(args.arch)
    files, images = fidelity_photos()
    calib = images[0::2]
    with tempfile.TemporaryDirectory(prefix="gradcam-lowp-") as tmp:
        folder = Path(tmp)
        export_s = {}
        clock = time.perf_counter()
        export_onnx(model, folder / "gradcam_k1.onnx", target_layer=target)  # validated, as users
        export_s["float32 (validated against the eager reference)"] = time.perf_counter() - clock
        export_onnx(model, folder / "gradcam_channel_weights.onnx", channel_weights_only=True,
                    validate=False, target_layer=target)  # fmt: skip
        k5 = () if args.speed_only or args.no_speed else (("int8_k5", 5),)
        if k5:
            export_onnx(model, folder / "gradcam_k5.onnx", num_targets=5, validate=False,
                        target_layer=target)  # fmt: skip
        for name, k in (("gradcam_int8", 1), *k5):
            options = dict(channel_weights_only=True, num_targets=k, precision="int8", calibration=calib,
                           calibration_method=args.method, target_layer=target)  # fmt: skip
            path = folder / f"{name}.onnx"
            if name == "gradcam_int8":  # validated, as export does for a user (refusal reported)
                clock = time.perf_counter()
                refused = _refused("ONNX Runtime int8 export", export_onnx, model, path, **options)
                export_s["int8 (8 calibration photos, validated)"] = time.perf_counter() - clock
            if name != "gradcam_int8" or refused:  # a refused file is still timed and judged
                export_onnx(model, path, validate=False, **options)
        export_floor(model, folder / "floor.onnx", 224)
        print(f"# exported in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        startup, fid = {}, {}
        if openvino_installed():
            os.environ["GRADCAM_FAST_CACHE"] = str(folder / "cache")  # compiled models, int8
            if not args.speed_only:
                startup = start_times(folder, calib)
                print(f"# start-up: {json.dumps(startup)}", file=sys.stderr, flush=True)
            nncf_files(folder, calib, validated=not args.speed_only)
        if not args.speed_only:
            fid = fidelity(model, folder, images, args.method, target)
            print(f"# fidelity: {json.dumps(fid)}", file=sys.stderr, flush=True)  # partial runs
        spd = {} if args.no_speed else speed(model, folder, names, batches, target)
        if startup:
            spd["startup"] = startup
        spd["export_s"] = export_s
    report = render(fid, spd, files, time.perf_counter() - started, args.arch)
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
