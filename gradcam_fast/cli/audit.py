"""`gradcam-fast audit SOURCE... --annotations ANN --out DIR`: `audit.run.audit_folder` on the
command line (on Ray with --ray).

Exit status: 0 every image and annotation audited; 1 some failed (see images.jsonl and stderr);
2 usage, annotation-file or model error, nothing audited.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..model.catalog import METHOD_NAMES
from .options import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_model_options,
    fraction,
    network_options,
    non_negative_float,
    non_negative_int,
    positive,
    session_options,
    usage_error,
)

__all__ = ["DESCRIPTION", "EPILOG", "HELP", "add_arguments", "run"]

_METRICS = ("pointing", "energy", "localization", "deletion", "insertion", "drop", "road")


def _metrics(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in _METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {unknown}: choose from {', '.join(_METRICS)}"
        )
    return names


def run(args: argparse.Namespace) -> int:
    from ..app.model_cache import open_session
    from ..audit.annotations import load_annotations, read_class_map, resolve_labels
    from ..audit.core import LOCALIZATION, METRICS, AuditSettings
    from ..audit.run import audit_folder
    from ..io.discover import collect_inputs

    paths = collect_inputs(args.source, exclude=args.out)
    if not paths:
        return usage_error(f"no image files found in {' '.join(args.source)}")
    if args.out.exists() and not args.out.is_dir():
        return usage_error(f"--out {args.out} is a file; give a folder for the report")
    metrics = args.metrics or METRICS
    if args.annotations is None:
        dropped = [m for m in metrics if m in LOCALIZATION]
        if args.metrics and dropped:
            return usage_error(f"{', '.join(dropped)} need --annotations")
        metrics = tuple(m for m in metrics if m not in LOCALIZATION)
    annotations = load_annotations(args.annotations) if args.annotations else None
    settings = AuditSettings(
        metrics=tuple(metrics),
        steps=args.steps,
        baseline=args.baseline,
        tolerance=args.tolerance,
        threshold=args.threshold,
        method=args.method,
        batch_size=args.batch_size,
        crop=not args.no_crop,
    )
    session = open_session(
        **session_options(args),
        **network_options(args),
        num_targets=1,
        channel_weights_only=args.method == "gradcam",
    )
    meta = session.metadata
    if annotations is not None:
        class_map = read_class_map(args.class_map) if args.class_map else None
        annotations, unmatched = resolve_labels(
            annotations, meta.categories, meta.num_classes, class_map
        )
        if unmatched and not args.quiet:
            print(
                f"gradcam-fast: classes the model lacks: {', '.join(unmatched[:20])}",
                file=sys.stderr,
            )
    runner = None
    if args.ray:
        try:
            import ray

            from ..audit.distributed import ray_runner
        except ImportError as exc:
            return usage_error(f'--ray needs Ray Data: pip install "gradcam_fast[ray]" ({exc})')
        if session.path is None:
            return usage_error("--ray needs a model file")
        if not ray.is_initialized():
            ray.init(address=args.address)
        runner = ray_runner(session.path, settings, actors=args.actors)
    roots = [Path(s) for s in args.source if Path(s).is_dir()]
    start = time.perf_counter()
    rows = audit_folder(
        paths,
        session,
        args.out,
        annotations=annotations,
        roots=roots,
        settings=settings,
        workers=args.workers,
        progress=not args.quiet,
        runner=runner,
    )
    failed = sum("error" in r for r in rows)
    if not args.quiet:
        print(
            f"gradcam-fast: {len(rows) - failed} image-class row(s) audited, {failed} error(s) "
            f"in {time.perf_counter() - start:.1f} s; rows in {args.out / 'images.jsonl'}, "
            f"report in {args.out / 'index.html'}",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else EXIT_OK


HELP = "localization and faithfulness of the maps over a dataset, with a report"
DESCRIPTION = """\
Audit the maps of every image of SOURCE (files, folders, globs): with --annotations (COCO JSON,
a folder of Pascal VOC XML files, or a CSV file,class,x0,y0,x1,y1 in original pixels), the
pointing game, the energy-based pointing game and box localization for each annotated class;
always, deletion/insertion AUC, average drop/increase in confidence and ROAD. Writes
images.jsonl (one line per image and class, or an error), summary.json (means with bootstrap
intervals) and index.html into --out; rerunning into the same --out resumes.
"""
EPILOG = """\
exit status: 0 everything audited; 1 some images or annotations failed (see images.jsonl); 2
usage, annotation-file or model error. Metrics: docs/audit.md.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `gradcam-fast audit`."""
    p.add_argument("source", nargs="+", metavar="SOURCE", help="image files, folders or globs")
    p.add_argument(
        "-o", "--out", type=Path, required=True, help="output folder (resumed if it exists)"
    )
    ann = p.add_argument_group("annotations")
    ann.add_argument(
        "--annotations", type=Path, metavar="ANN", help="COCO .json, VOC folder or .csv"
    )
    ann.add_argument(
        "--class-map",
        type=Path,
        metavar="FILE",
        help="labels by class index: line i's first word is class i's label (e.g. ImageNet's "
        "LOC_synset_mapping.txt for WordNet ids)",
    )
    m = p.add_argument_group("metrics")
    m.add_argument(
        "--metrics", type=_metrics, help=f"comma-separated subset of {','.join(_METRICS)}"
    )
    m.add_argument(
        "--steps", type=positive, default=20, help="deletion/insertion steps (default 20)"
    )
    m.add_argument(
        "--baseline",
        choices=("blur", "constant"),
        default="blur",
        help="what deleted pixels become",
    )
    m.add_argument(
        "--tolerance",
        type=non_negative_float,
        default=15.0,
        help="pointing game tolerance, pixels (15)",
    )
    m.add_argument(
        "--threshold", type=fraction, default=0.15, help="box localization: share of the max (0.15)"
    )
    m.add_argument("--method", default="gradcam", choices=list(METHOD_NAMES), help="CAM method")
    m.add_argument("--no-crop", action="store_true", help="resize to S x S without a center crop")
    r = p.add_argument_group("running")
    r.add_argument("--batch-size", type=positive, default=16, help="images per session call (16)")
    r.add_argument("--workers", type=non_negative_int, default=2, help="decoding threads (2)")
    r.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    r.add_argument("--ray", action="store_true", help="audit on Ray Data, one session per actor")
    r.add_argument("--actors", type=positive, default=1, help="with --ray: sessions at once")
    r.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="with --ray: cluster")
    add_model_options(p)
