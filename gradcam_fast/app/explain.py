"""explain(paths, session, out): Grad-CAM overlays for image files, decoding and writing
overlapped with the model.

Files are decoded and preprocessed in a thread pool ahead of the session, in batches, so decoding
overlaps inference; outputs are encoded and written by the same pool while the next batch runs.
Every input gives one line of out/results.jsonl, in input order: its predictions, the classes
explained and the files written, or the error that made it unusable. A bad file never stops the
run. `gradcam-fast explain` (cli/explain.py) is this function behind a parser.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import IO

import torch

from ..check.finite import NONFINITE, NonFiniteMapsError
from ..format.protocols import Session
from ..format.result import GradCAMResult
from ..io.gallery import write_gallery
from ..io.images import preprocessing_of
from .classes import class_targets, maps_to_write, top_predictions
from .steps import Decoded, decode, model_input, slug, write_overlays

__all__ = ["explain"]


@dataclasses.dataclass
class _Item:
    """One input file on its way through the pipeline."""

    path: Path
    decoded: Decoded
    seconds: float = 0.0  # decode + share of the batch's model time + writing
    record: dict | None = None

    @property
    def error(self) -> str | None:
        return self.decoded.error

    @error.setter
    def error(self, message: str) -> None:  # the model's outputs for it were not finite
        self.decoded.error = message


def _decode(path: Path, read: Callable[[Path], Decoded]) -> _Item:
    start = time.perf_counter()
    item = _Item(path, read(path))
    item.seconds = time.perf_counter() - start
    return item


def _write(item: _Item, write: Callable[..., list[Path]], out: Path, stem: str, *maps) -> list[str]:
    """The item's overlays (and maps); returns the file names written, relative to out."""
    start = time.perf_counter()
    written = [p.name for p in write(out, stem, item.decoded, *maps)]
    item.seconds += time.perf_counter() - start
    return written


def _decoded(
    paths: Sequence[Path],
    decode_item: Callable[[Path], _Item],
    pool: ThreadPoolExecutor | None,
    ahead: int,
) -> Iterator[_Item]:
    """Decoded items in input order; with a pool, up to `ahead` files are decoded in advance."""
    if pool is None:
        yield from map(decode_item, paths)
        return
    pending: deque[Future[_Item]] = deque()
    queue = iter(paths)
    for path in queue:
        pending.append(pool.submit(decode_item, path))
        if len(pending) >= ahead:
            break
    while pending:
        item = pending.popleft().result()
        path = next(queue, None)
        if path is not None:
            pending.append(pool.submit(decode_item, path))
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


def _run_batch(
    session: Session, good: list[_Item], targets: torch.Tensor | None, **call
) -> GradCAMResult:
    """The session on a batch of decoded items (result on the CPU); adds each item's share of
    the time to its `seconds`. Items whose outputs are not finite get an error instead."""
    start = time.perf_counter()
    t = None if targets is None else targets.expand(len(good), -1)
    try:
        result = session(model_input([item.decoded for item in good]), t, **call).to("cpu")
    except NonFiniteMapsError as exc:  # those images failed; the others are fine
        result = exc.result.to("cpu")
        for b in exc.indices:
            good[b].error = f"{good[b].path}: {NONFINITE}"
    share = (time.perf_counter() - start) / len(good)
    for item in good:
        item.seconds += share
    return result


def explain(
    paths: Sequence[Path],
    session: Session,
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
    maps = maps_to_write(session.path, meta.num_targets, classes, top_k)
    targets = class_targets(classes, meta.num_targets)
    out.mkdir(parents=True, exist_ok=True)
    if on_error is None:
        on_error = lambda message: tqdm.write(f"gradcam-fast: {message}", file=sys.stderr)  # noqa: E731
    preprocessing_of(meta)  # metadata no image could be preprocessed with fails here, once
    read = partial(decode, meta=meta, crop=crop, keep_original=full_image, verbose=verbose)
    write = partial(
        write_overlays, colormap=colormap, alpha=alpha, full_image=full_image, save_maps=save_maps
    )
    pool = ThreadPoolExecutor(workers, thread_name_prefix="gradcam-io") if workers > 0 else None
    records: list[dict] = []
    stems: set[str] = set()
    written: deque[tuple[list[_Item], list[Future]]] = deque()
    bar = tqdm(total=len(paths), unit="img", desc="explain", file=sys.stderr, disable=not progress)

    def unique_stem(path: Path) -> str:
        stem, n = slug(path.stem), 1
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
                    item.decoded.error = f"{item.path}: cannot write its outputs into {out}: {exc}"
                    if verbose:
                        traceback.print_exc()
            if item.error is not None:
                on_error(item.error)
                item.record = {"path": str(item.path), "error": item.error}
            item.record["time_s"] = round(item.seconds, 6)
            results.write(json.dumps(item.record, ensure_ascii=False) + "\n")
            records.append(item.record)
            item.decoded = Decoded(error=item.error)  # let the pixels go
        results.flush()
        bar.update(len(batch))
        return True

    finished = False
    try:
        with open(out / "results.jsonl", "w", encoding="utf-8") as results:
            items = _decoded(paths, partial(_decode, read=read), pool, ahead=batch_size + workers)
            for batch in _batches(items, batch_size):
                good = [item for item in batch if item.error is None]
                jobs: dict[int, Future] = {}
                if good:
                    result = _run_batch(
                        session, good, targets, method=method, aug_smooth=aug_smooth
                    )
                    probs, cams = result.probabilities(), result.cams.numpy()
                    for b, item in enumerate(good):
                        if item.error is not None:  # its outputs were not finite
                            continue
                        explained = result.target_classes[b, :maps].tolist()
                        item.record = {
                            "path": str(item.path),
                            "predictions": top_predictions(probs[b], names),
                            "explained": explained,
                        }
                        stem = unique_stem(item.path)
                        job = (item, write, out, stem, cams[b, :maps], explained, names)
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
