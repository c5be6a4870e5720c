"""Command-line options for the backend and precision: `export --precision float32|float16|int8`
(int8 with `--calibration DIR`; `--fp16` and `--int8` are its deprecated spellings), and
for the commands that run sessions (explain, explain-dataset, serve, bench) `--backend` and
`--precision` (both "auto" by default: `cpu_choice`'s table for this CPU) with `--calibration
DIR` for int8. Kept apart from runtime/ort_quantize.py so that building the parser imports
neither torch nor onnx.

On the CPU the session resolves auto itself (`runtime/backends.py`): it tries the CPU row's
candidates and keeps a lossy one (int8, made from the float32 export with --calibration, or
OpenVINO's bfloat16) only where it holds the maps and was timed faster on this model and CPU
(once, cached). explain and bench open their session here; explain-dataset and serve settle
auto once in this process (`settled_session_kwargs`), so that every actor and replica runs
the same choice. Every command prints the choice, and why, on stderr. The lists of export
precisions and calibration methods are format/options.py's (torch-free).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..format.options import CALIBRATION_METHODS, EXPORT_PRECISIONS, one_precision

__all__ = [
    "add_precision_options",
    "choice_line",
    "precision_kwargs",
    "session_kwargs",
    "settled_session_kwargs",
]

_PRECISIONS = ("auto", "float32", "bfloat16", "int8")
_BACKENDS = ("auto", "onnxruntime", "openvino")
_LOSSY = (
    "lossy: its maps are judged against float32's by correlation (compare.LIMITS); "
    "--precision float32 for exact maps"
)


def add_precision_options(group, export: bool = False) -> None:
    """Add --int8 (export) or --backend and --precision (other commands), with --calibration
    and --calibration-method, to a parser or argument group."""
    if export:
        group.add_argument(
            "--precision",
            choices=EXPORT_PRECISIONS,
            help="the file's precision (default float32): float16, a float16 body with float32 "
            "head and I/O (for the CUDA provider); int8, a static per-channel int8 body (ONNX "
            "Runtime QOperator format) calibrated on --calibration, head and its backward "
            "float32 (CPU)",
        )
        group.add_argument("--int8", action="store_true", help="deprecated: --precision int8")
        group.add_argument("--fp16", action="store_true", help="deprecated: --precision float16")
    else:
        group.add_argument(
            "--backend",
            choices=_BACKENDS,
            default="auto",
            help="what runs the model: ONNX Runtime or OpenVINO (CPU; the openvino extra); "
            "auto (default): the fastest measured on this CPU's kind (AMX, AVX512-BF16, VNNI)",
        )
        group.add_argument(
            "--precision",
            choices=_PRECISIONS,
            default="auto",
            help="auto (default): the fastest precision whose maps hold on this CPU and model "
            "(bfloat16 or, with --calibration, int8: each timed on the model once, cached, and "
            "kept only where it pays; else exact float32); float32: exact; bfloat16: OpenVINO "
            "only; int8 needs --calibration",
        )
    group.add_argument(
        "--calibration",
        type=Path,
        metavar="DIR",
        help="folder of at least 8 photos like those to explain, for int8 activation ranges "
        "(the cache key includes a hash of its files)",
    )
    group.add_argument(
        "--calibration-method",
        choices=CALIBRATION_METHODS,
        default="minmax",
        help="(ONNX Runtime's int8, default minmax; OpenVINO's int8 uses NNCF's)",
    )


def _cuda(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    from ..runtime.providers import available_devices

    return device == "auto" and "cuda" in available_devices()


def _choice(args: argparse.Namespace):
    """What runs where the CLI decides it: on a GPU, ONNX Runtime's CUDA provider (float32 for
    auto); on the CPU, given values kept as they are; None where the CPU's session resolves
    auto."""
    from ..runtime.cpu_choice import Choice

    if _cuda(args.device):
        precision = "float32" if args.precision == "auto" else args.precision
        return Choice("onnxruntime", precision, "a GPU: ONNX Runtime's CUDA provider")
    if "auto" in (args.backend, args.precision):
        return None
    return Choice(args.backend, args.precision, "as given")


_NEEDS_CALIBRATION = (
    "int8 needs --calibration DIR: a folder of at least 8 photos like those the model will explain"
)


def _calibration(args: argparse.Namespace) -> dict:
    return {"calibration": args.calibration, "calibration_method": args.calibration_method}


def precision_kwargs(args: argparse.Namespace) -> dict:
    """export_onnx / cached_model keyword arguments for the parsed options: export's precision
    (int8 with its calibration); for the other commands none (they export float32, and the
    session makes int8 from it), after refusing --calibration without int8 (or auto) and int8
    without --calibration."""
    if not hasattr(args, "backend"):  # export
        precision = _export_precision(args)
        if precision != "int8":
            if args.calibration is not None:
                raise ValueError("--calibration is for int8 models: add --precision int8")
            return {"precision": precision}
        if args.calibration is None:
            raise ValueError(_NEEDS_CALIBRATION)
        return {"precision": "int8", **_calibration(args)}
    if args.calibration is None and args.precision == "int8":
        raise ValueError(_NEEDS_CALIBRATION)
    if args.calibration is not None and args.precision not in ("int8", "auto"):
        raise ValueError("--calibration is for int8 models: use --precision int8 (or auto)")
    return {}


def _export_precision(args: argparse.Namespace) -> str:
    """export's --precision, or its deprecated spellings --fp16 and --int8 (each noted on
    stderr); two different precisions at once are refused (`options.one_precision`, as
    export_onnx's own deprecated spellings are)."""
    asked = {} if args.precision is None else {f"--precision {args.precision}": args.precision}
    for flag, precision in (("--fp16", "float16"), ("--int8", "int8")):
        if getattr(args, flag[2:]):
            note = f"gradcam-fast: note: {flag} is deprecated: use --precision {precision}"
            print(note, file=sys.stderr)
            asked[flag] = precision
    return one_precision(asked, "--precision")


def session_kwargs(args: argparse.Namespace) -> dict:
    """GradCAMSession keywords for the options: the backend and precision (auto resolved by
    the session on the CPU, `_choice` on a GPU) and the int8 calibration."""
    choice = _choice(args)
    backend, precision = choice[:2] if choice is not None else (args.backend, args.precision)
    kwargs = {"backend": backend, "precision": precision}
    if args.calibration is not None and precision in ("int8", "auto"):
        kwargs |= _calibration(args)
    return kwargs


def settled_session_kwargs(args: argparse.Namespace, model: str | Path) -> tuple[dict, str]:
    """`session_kwargs` with auto settled for the sessions other processes open (explain-dataset's
    actors, serve's replicas), and the line that says what they run. Auto is settled by opening
    the session here once: it times the lossy candidates and makes the int8 model (both
    cached), so the actors open the same choice at once."""
    kwargs = session_kwargs(args)
    if "auto" not in (kwargs["backend"], kwargs["precision"]):
        return kwargs, choice_line(args)
    from ..runtime.session import GradCAMSession

    session = GradCAMSession(model, device="cpu", **kwargs)
    line, (backend, precision) = choice_line(args, session), session.choice[:2]
    settled = {"backend": backend, "precision": precision}
    if precision == "int8" and args.calibration is not None:
        settled |= _calibration(args)  # finds the int8 model made from a float32 file
    return settled, line


def choice_line(args: argparse.Namespace, session=None) -> str:
    """What runs and why, one line for stderr: the session's choice, or the CLI's (a GPU, or
    values given)."""
    choice = session.choice if session is not None else _choice(args)
    if session is not None:
        backend, precision = session.backend, session.precision
    elif choice is not None:
        backend, precision = choice.backend, choice.precision
    else:
        return (
            f"gradcam-fast: backend {args.backend}, precision {args.precision} "
            "(resolved by each session from the model file and this CPU)"
        )
    line = f"gradcam-fast: backend {backend}, precision {precision}"
    line += f": {choice.reason}" if choice is not None else ""
    return line + (f"; {_LOSSY}" if precision in ("bfloat16", "int8") else "")
