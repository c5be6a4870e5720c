"""`gradcam-fast explain IMAGE... --out DIR`: Grad-CAM overlays for files, folders and globs.

Files are decoded and preprocessed in a thread pool ahead of the session, in batches, so decoding
overlaps inference; outputs are encoded and written by the same pool while the next batch runs.
Every input gives one line of DIR/results.jsonl, in input order: its predictions, the classes
explained and the files written, or the error that made it unusable. A bad file never stops the
run; the exit status says whether any failed (0 all explained, 1 some failed, 2 nothing ran).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import glob
import html
import json
import logging
import re
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO
from urllib.parse import quote

import numpy as np
import torch

from .cli import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_class_options,
    add_model_options,
    fraction,
    non_negative_int,
    open_session,
    positive,
)
from .finite import NONFINITE, NonFiniteMapsError
from .images import (
    IMAGE_EXTENSIONS,
    ImageError,
    ModelCrop,
    cam_to_image,
    load_image,
    model_crop,
    model_view,
    to_tensor,
)
from .methods import METHODS
from .visualize import COLORMAPS, atomic_file, colormap_lut, overlay, save_npy, save_png

__all__ = ["add_parser", "collect_inputs", "explain", "resolve_classes"]

log = logging.getLogger(__name__)

TOP_PREDICTIONS = 5


# ---------------------------------------------------------------------------------------------
# inputs and classes


def collect_inputs(items: Sequence[str], exclude: Path | None = None) -> list[Path]:
    """Image files named by `items` (files, directories searched recursively, glob patterns), in
    order and without duplicates.

    Directories contribute files with an image extension (IMAGE_EXTENSIONS), skipping hidden
    files and folders and anything under `exclude` (the output folder). A file named explicitly
    is taken whatever its extension; an item that names nothing is kept as a path, so that it is
    reported as a missing file like any other unusable input.
    """
    found: list[Path] = []
    seen: set[Path] = set()
    excluded = exclude.resolve() if exclude is not None else None

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    def scan(folder: Path) -> None:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).parts
            if any(part.startswith(".") for part in relative) or not path.is_file():
                continue
            if excluded is not None and path.resolve().is_relative_to(excluded):
                continue
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                add(path)

    for item in items:
        path = Path(item)
        if path.is_dir():
            scan(path)
        elif path.exists():
            add(path)
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            for match in matches:
                scan(Path(match)) if Path(match).is_dir() else add(Path(match))
            if not matches:
                add(path)
        else:
            add(path)
    return found


def _normalize(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def resolve_classes(
    values: Sequence[str], categories: Sequence[str], num_classes: int
) -> list[int]:
    """Class indices for `--class` values: an index 0..num_classes-1, or a class name of the
    model (case, underscores and extra spaces ignored). An unknown name raises ValueError with
    the closest names; a class given twice is refused (it would compute the same map twice)."""
    by_name: dict[str, list[int]] = {}
    for index, name in enumerate(categories):
        by_name.setdefault(_normalize(name), []).append(index)
    resolved: list[int] = []
    for value in values:
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            index = int(text)
            if not 0 <= index < num_classes:
                raise ValueError(
                    f"--class {value}: class index out of range; this model has classes "
                    f"0..{num_classes - 1}"
                )
        elif not categories:
            raise ValueError(
                f"--class {value!r}: this model carries no class names; pass a class index "
                f"0..{num_classes - 1}"
            )
        else:
            indices = by_name.get(_normalize(text))
            if indices is None:
                raise ValueError(f"--class {value!r}: unknown class name{_suggest(text, by_name)}")
            if len(indices) > 1:
                raise ValueError(
                    f"--class {value!r} names several classes ({', '.join(map(str, indices))}): "
                    "pass the index instead"
                )
            index = indices[0]
        if index in resolved:
            raise ValueError(f"--class {value}: class {index} is given twice")
        resolved.append(index)
    return resolved


def _suggest(text: str, by_name: dict[str, list[int]]) -> str:
    key = _normalize(text)
    names = list(by_name)
    close = [n for n in names if key in n][:5]
    close += [n for n in difflib.get_close_matches(key, names, n=5, cutoff=0.6) if n not in close]
    if not close:
        return "; no class name is close to it (class names come from the model's metadata)"
    shown = ", ".join(f"{n!r} ({by_name[n][0]})" for n in close[:6])
    return f"; close matches: {shown}"


# ---------------------------------------------------------------------------------------------
# the pipeline


@dataclasses.dataclass
class _Item:
    """One input file on its way through the pipeline."""

    path: Path
    seconds: float = 0.0  # decode + share of the batch's model time + writing
    error: str | None = None
    view: np.ndarray | None = None  # uint8 [S, S, 3], what the model saw
    tensor: torch.Tensor | None = None  # float32 [3, S, S], normalized (None for raw pixels)
    crop: ModelCrop | None = None
    original: np.ndarray | None = None  # uint8 [H, W, 3], kept for --full-image
    record: dict | None = None


@dataclasses.dataclass(frozen=True)
class _Settings:
    out: Path
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop: bool
    full_image: bool
    colormap: str
    alpha: float
    save_maps: bool
    verbose: bool
    raw_pixels: bool  # the model takes uint8 [B, S, S, 3] and normalizes inside
    method: str = "gradcam"  # a name in methods.METHODS
    aug_smooth: bool = False


def _decode(path: Path, s: _Settings) -> _Item:
    """Read, convert and preprocess one file; failures become the item's error."""
    start = time.perf_counter()
    item = _Item(path)
    try:
        image = load_image(path)
        item.crop = model_crop(image.width, image.height, s.size, s.crop)
        item.view = model_view(image, s.size, s.crop)
        if not s.raw_pixels:
            item.tensor = to_tensor(item.view, s.mean, s.std)
        if s.full_image:
            item.original = np.asarray(image)
    except ImageError as exc:
        item.error = str(exc)
    except Exception as exc:  # a bug or resource problem with this file: report it, go on
        item.error = f"{path}: unexpected {type(exc).__name__} while reading: {exc}"
        if s.verbose:
            traceback.print_exc()
    item.seconds = time.perf_counter() - start
    return item


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "image"


def _write(item: _Item, stem: str, cams: np.ndarray, classes: list[int], names, s: _Settings):
    """Overlay PNGs (and maps) for one image; returns the file names written, relative to out."""
    start = time.perf_counter()
    written: list[str] = []
    for cam, index in zip(cams, classes, strict=True):
        name = f"{stem}_{index}" + (f"_{_slug(names[index])}" if names else "")
        if s.full_image:
            picture = overlay(item.original, cam_to_image(cam, item.crop), s.colormap, s.alpha)
        else:
            picture = overlay(item.view, cam, s.colormap, s.alpha)
        save_png(picture, s.out / f"{name}.png")
        written.append(f"{name}.png")
        if s.save_maps:
            save_npy(cam.astype(np.float32), s.out / f"{name}.npy")
            written.append(f"{name}.npy")
    item.seconds += time.perf_counter() - start
    return written


def _decoded(
    paths: Sequence[Path],
    decode: Callable[[Path], _Item],
    pool: ThreadPoolExecutor | None,
    ahead: int,
) -> Iterator[_Item]:
    """Decoded items in input order; with a pool, up to `ahead` files are decoded in advance."""
    if pool is None:
        yield from map(decode, paths)
        return
    pending: deque[Future[_Item]] = deque()
    queue = iter(paths)
    for path in queue:
        pending.append(pool.submit(decode, path))
        if len(pending) >= ahead:
            break
    while pending:
        item = pending.popleft().result()
        path = next(queue, None)
        if path is not None:
            pending.append(pool.submit(decode, path))
        yield item


def _submit(pool: ThreadPoolExecutor | None, fn: Callable, *args) -> Future:
    """fn(*args) in the pool, or here and now when there is none (its outcome in a Future)."""
    if pool is not None:
        return pool.submit(fn, *args)
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as exc:
        future.set_exception(exc)
    return future


def _batches(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    """Runs of items holding `size` decodable images each (failed items ride along in order)."""
    batch: list[_Item] = []
    good = 0
    for item in items:
        batch.append(item)
        good += item.error is None
        if good == size:
            yield batch
            batch, good = [], 0
    if batch:
        yield batch


def _run_batch(session, good: list[_Item], targets: torch.Tensor | None, s: _Settings):
    """The session on a batch of decoded items (result on the CPU); adds each item's share of
    the time to its `seconds`. Items whose outputs are not finite get an error instead."""
    start = time.perf_counter()
    if s.raw_pixels:
        x = torch.from_numpy(np.stack([item.view for item in good]))
    else:
        x = torch.stack([item.tensor for item in good])
    t = None if targets is None else targets.expand(len(good), -1)
    try:
        result = session(x, t, method=s.method, aug_smooth=s.aug_smooth).to("cpu")
    except NonFiniteMapsError as exc:  # those images failed; the others are fine
        result = exc.result.to("cpu")
        for b in exc.indices:
            good[b].error = f"{good[b].path}: {NONFINITE}"
    share = (time.perf_counter() - start) / len(good)
    for item in good:
        item.seconds += share
    return result


def _predictions(probs: torch.Tensor, names: Sequence[str]) -> list[dict]:
    top = probs.topk(min(TOP_PREDICTIONS, probs.numel()))
    return [
        {"index": int(i), "name": names[i] if names else None, "probability": round(float(p), 6)}
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


def explain(
    paths: Sequence[Path],
    session,
    out: Path,
    *,
    classes: Sequence[int] | None = None,
    top_k: int | None = None,
    batch_size: int = 16,
    workers: int = 4,
    crop: bool = True,
    full_image: bool = False,
    colormap: str = "jet",
    alpha: float = 0.5,
    save_maps: bool = False,
    method: str = "gradcam",
    aug_smooth: bool = False,
    progress: bool = True,
    verbose: bool = False,
    on_error: Callable[[str], None] | None = None,
) -> list[dict]:
    """Explain `paths` with `session` into `out`; returns the records written to results.jsonl.

    `classes` (one map each), else the `top_k` most likely classes (default: the model's K); a
    model with K maps per image serves up to K classes (extra maps are computed, not written).
    `workers` threads decode ahead and write behind the session; 0 does both in this thread,
    without overlap. `on_error` gets each failed file's message (default: one stderr line).
    `method` and `aug_smooth` are passed to the session call.
    """
    from tqdm import tqdm

    meta = session.metadata
    names = tuple(meta.categories)
    s = _Settings(
        out, meta.image_size, tuple(meta.mean), tuple(meta.std), crop, full_image, colormap,
        alpha, save_maps, verbose, meta.input_format == "uint8_nhwc", method, aug_smooth,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    if on_error is None:
        on_error = lambda message: tqdm.write(f"gradcam-fast: {message}", file=sys.stderr)  # noqa: E731
    k = meta.num_targets
    maps = len(classes) if classes else top_k or k
    if maps > k:
        raise ValueError(f"{session.path} computes {k} map(s) per image, not {maps}")
    targets = None
    if classes:  # padded to the model's K with the last class; the padding is not written
        padded = list(classes) + [classes[-1]] * (k - len(classes))
        targets = torch.tensor(padded, dtype=torch.int64)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="gradcam-io") if workers > 0 else None
    records: list[dict] = []
    stems: set[str] = set()
    written: deque[tuple[list[_Item], list[Future]]] = deque()
    bar = tqdm(total=len(paths), unit="img", desc="explain", file=sys.stderr, disable=not progress)

    def unique_stem(path: Path) -> str:
        stem, n = _slug(path.stem), 1
        while (candidate := stem if n == 1 else f"{stem}-{n}") in stems:
            n += 1
        stems.add(candidate)
        return candidate

    def finish(batch: list[_Item], outputs: list[Future], results: IO[str], block: bool) -> bool:
        if not block and not all(f.done() for f in outputs):
            return False
        for item, files in zip(batch, outputs, strict=True):
            if item.error is None:
                try:
                    item.record["outputs"] = files.result()
                except Exception as exc:  # disk full, permissions, ...: this file failed
                    item.error = f"{item.path}: cannot write its outputs into {out}: {exc}"
                    if verbose:
                        traceback.print_exc()
            if item.error is not None:
                on_error(item.error)
                item.record = {"path": str(item.path), "error": item.error}
            item.record["time_s"] = round(item.seconds, 6)
            results.write(json.dumps(item.record, ensure_ascii=False) + "\n")
            records.append(item.record)
            item.view = item.tensor = item.original = None
        results.flush()
        bar.update(len(batch))
        return True

    finished = False
    try:
        with open(out / "results.jsonl", "w", encoding="utf-8") as results:
            items = _decoded(paths, lambda p: _decode(p, s), pool, ahead=batch_size + workers)
            for batch in _batches(items, batch_size):
                good = [item for item in batch if item.error is None]
                jobs: dict[int, Future] = {}
                if good:
                    result = _run_batch(session, good, targets, s)
                    probs, cams = result.probabilities(), result.cams.numpy()
                    for b, item in enumerate(good):
                        if item.error is not None:  # its outputs were not finite
                            continue
                        explained = result.target_classes[b, :maps].tolist()
                        item.record = {
                            "path": str(item.path),
                            "predictions": _predictions(probs[b], names),
                            "explained": explained,
                        }
                        job = (item, unique_stem(item.path), cams[b, :maps], explained, names, s)
                        jobs[id(item)] = _submit(pool, _write, *job)
                outputs = [jobs.get(id(item)) or _submit(None, list) for item in batch]
                written.append((batch, outputs))
                while written and finish(*written[0], results, block=len(written) > 1):
                    written.popleft()
            while written:
                finish(*written.popleft(), results, block=True)
        finished = True
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        try:
            write_gallery(out, records, meta)
        except OSError:
            if finished:  # else the error that stopped the run is the one to report
                raise
    return records


# ---------------------------------------------------------------------------------------------
# the gallery

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0;background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em;width:240px}
figure img{width:224px;height:auto;display:block;image-rendering:auto}
figcaption{font-size:.8em;margin-top:.4em;overflow-wrap:anywhere}
ol{margin:.3em 0 0 1.2em;padding:0}.error{color:#a00}
"""


def write_gallery(out: Path, records: Sequence[dict], meta) -> Path:
    """index.html in `out`: one card per overlay with the image's top classes; failed files
    listed with their errors. Only relative links, only to files in `out` that exist."""
    e = html.escape
    names = meta.categories
    cards, errors = [], []
    for record in records:
        if "error" in record:
            errors.append(f"<li><code>{e(record['path'])}</code>: {e(record['error'])}</li>")
            continue
        top = "".join(
            f"<li>{e(p['name'] or str(p['index']))} ({p['index']}): {p['probability']:.3f}</li>"
            for p in record["predictions"]
        )
        pngs = [f for f in record.get("outputs", []) if f.endswith(".png") and (out / f).is_file()]
        for file, index in zip(pngs, record["explained"], strict=False):
            label = f"{names[index]} ({index})" if names else f"class {index}"
            href = quote(file)
            cards.append(
                f'<figure><a href="{href}"><img src="{href}" loading="lazy" alt="{e(label)}"></a>'
                f"<figcaption><b>{e(Path(record['path']).name)}</b><br>explains {e(label)}"
                f"<ol>{top}</ol></figcaption></figure>"
            )
    title = f"Grad-CAM: {meta.arch}, layer {meta.target_layer}"
    body = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{e(title)}</h1>",
        f"<p>weights {e(meta.weights)}; {len(records) - len(errors)} images explained, "
        f"{len(errors)} failed; details in <a href='results.jsonl'>results.jsonl</a></p>",
        f"<div class='grid'>{''.join(cards)}</div>",
    ]
    if errors:
        body.append(f"<h2 class='error'>Failed files</h2><ul>{''.join(errors)}</ul>")
    body.append("</body></html>\n")
    path = out / "index.html"
    with atomic_file(path, "w") as f:
        f.write("\n".join(body))
    return path


# ---------------------------------------------------------------------------------------------
# the subcommand


def _run(args: argparse.Namespace) -> int:
    try:
        colormap_lut(args.colormap)
    except ValueError as exc:
        return _usage_error(str(exc))
    if args.classes and args.top_k is not None:
        return _usage_error("give either --class or --top-k, not both")
    paths = collect_inputs(args.images, exclude=args.out)
    if not paths:
        return _usage_error(f"no image files found in {' '.join(args.images)}")
    if args.out.exists() and not args.out.is_dir():
        return _usage_error(f"--out {args.out} is a file; give a folder for the outputs")
    try:  # before the (possibly slow) model export: fail early on an unusable --out
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return _usage_error(f"--out {args.out}: cannot create the folder ({exc.strerror or exc})")
    try:
        tempfile.TemporaryFile(dir=args.out).close()
    except OSError as exc:
        return _usage_error(
            f"--out {args.out}: cannot write into the folder ({exc.strerror or exc})"
        )
    wanted = len(args.classes) if args.classes else args.top_k
    # Grad-CAM needs only the channel weights: the cached model for it skips the first Linear's
    # backward (benchmarks/RESULTS.md); the other methods need the gradients.
    session = open_session(args, wanted or 1, gradients=args.method != "gradcam")
    meta = session.metadata
    classes = None
    if args.classes:
        classes = resolve_classes(args.classes, meta.categories, meta.num_classes)
    if wanted is not None and wanted > meta.num_targets:
        what = f"{wanted} classes (--class)" if args.classes else f"--top-k {wanted}"
        return _usage_error(
            f"{session.path} computes {meta.num_targets} map(s) per image, fewer than the {what} "
            f"asked for: export a model with -k {wanted}, or leave out --model to have one made"
        )
    start = time.perf_counter()
    records = explain(
        paths,
        session,
        args.out,
        classes=classes,
        top_k=args.top_k,
        batch_size=args.batch_size,
        workers=args.workers,
        crop=not args.no_crop,
        full_image=args.full_image,
        colormap=args.colormap,
        alpha=args.alpha,
        save_maps=args.save_maps,
        method=args.method,
        aug_smooth=args.aug_smooth,
        progress=not args.quiet,
        verbose=getattr(args, "verbose", False),
    )
    elapsed = time.perf_counter() - start
    failed = sum("error" in r for r in records)
    if not args.quiet:
        print(
            f"gradcam-fast: {len(records) - failed} image(s) explained, {failed} failed, "
            f"{len(records) / elapsed:.1f} images/s; results in {args.out / 'results.jsonl'}, "
            f"gallery in {args.out / 'index.html'}",
            file=sys.stderr,
        )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _usage_error(message: str) -> int:
    print(f"gradcam-fast: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def add_parser(subparsers) -> None:
    """Add the `explain` subcommand."""
    p = subparsers.add_parser(
        "explain",
        help="Grad-CAM overlays for image files and folders",
        description="Grad-CAM overlays for image files, folders (recursive) and glob patterns. "
        "Writes an overlay PNG per image and class, results.jsonl (one line per input) and "
        "index.html (a gallery) into --out.",
        epilog="exit status: 0 every file explained; 1 some files failed (see results.jsonl); "
        "2 usage or model error, nothing explained.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or globs")
    p.add_argument("-o", "--out", type=Path, required=True, help="output folder")
    add_class_options(p)
    pre = p.add_argument_group("preprocessing and outputs")
    pre.add_argument(
        "--no-crop",
        action="store_true",
        help="resize the whole image to S x S instead of resize + center crop",
    )
    pre.add_argument(
        "--full-image",
        action="store_true",
        help="draw the heatmap on the original image instead of on what the model saw",
    )
    pre.add_argument(
        "--colormap",
        default="jet",
        help=f"heatmap colors: {', '.join(COLORMAPS)} (or matplotlib's, if installed)",
    )
    pre.add_argument(
        "--alpha", type=fraction, default=0.5, help="heatmap weight in the blend (0..1)"
    )
    pre.add_argument(
        "--save-maps", action="store_true", help="also save each map as .npy (float32, S x S)"
    )
    pre.add_argument(
        "--method",
        default="gradcam",
        choices=list(METHODS),
        help="CAM method computed from the same activations and gradients (default gradcam)",
    )
    pre.add_argument(
        "--aug-smooth",
        action="store_true",
        help="average maps over a flip and two intensity factors (6x the images, one batch)",
    )
    run = p.add_argument_group("running")
    run.add_argument(
        "--batch-size", type=positive, default=16, help="images per session call (default 16)"
    )
    run.add_argument(
        "--workers",
        type=non_negative_int,
        default=4,
        help="threads decoding and writing alongside the model (default 4); 0 = no overlap",
    )
    run.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    add_model_options(p)
    p.set_defaults(func=_run)
