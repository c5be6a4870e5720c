"""Explaining whole datasets on Ray Data: one GradCAMSession per actor, decoding in the workers.

Files are read as bytes (`ray.data.read_binary_files`) and decoded by the actors, so a corrupt
file becomes a row with an error instead of a failed read task that fails the whole dataset.
`GradCAMPredictor` is the callable class given to `Dataset.map_batches`: each actor opens the
model once (ONNX Runtime's intra-op threads = the actor's CPUs, CUDA when it holds a GPU) and
turns batches of files into rows: path, top-5 predictions, explained classes, the low-resolution
maps and an error field, with the field names of `explain`'s results.jsonl where they overlap.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from ..app.classes import TOP_PREDICTIONS, class_targets, maps_to_write, top_predictions
from ..app.steps import decode, model_input, slug, write_overlays
from ..check.finite import NONFINITE, NonFiniteMapsError
from ..format.metadata import ModelMetadata
from ..io.files import atomic_file
from ..io.images import IMAGE_EXTENSIONS, preprocessing_of

if TYPE_CHECKING:
    import ray.data

__all__ = [
    "ROW_SCHEMA",
    "TOP_PREDICTIONS",
    "ActorResources",
    "GradCAMPredictor",
    "actor_resources",
    "explain_dataset",
    "read_maps",
    "read_metadata",
]

MAX_BLOCKS = 10_000  # beyond this, Ray's per-block bookkeeping outweighs finer balancing

# One row per input file. `predictions`, `explained`, `cams_lowres*` are null for failed files,
# `error` is null for explained ones. The maps are float32 [K, h, w] flattened row-major, with
# their shape alongside (Parquet has no fixed-shape tensors every reader understands).
ROW_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("error", pa.string()),
        (
            "predictions",
            pa.list_(
                pa.struct(
                    [("index", pa.int64()), ("name", pa.string()), ("probability", pa.float32())]
                )
            ),
        ),
        ("explained", pa.list_(pa.int64())),
        ("cams_lowres", pa.list_(pa.float32())),
        ("cams_lowres_shape", pa.list_(pa.int32())),
        ("outputs", pa.list_(pa.string())),
    ]
)


def read_metadata(model_path: str | os.PathLike) -> ModelMetadata:
    """The gradcam_fast metadata of an exported model, read without starting a session."""
    import onnx

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}: export one with `gradcam-fast export`")
    proto = onnx.load(str(path), load_external_data=False)
    return ModelMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(path))


def _local_model(model_path: str, shipped: list | None) -> str:
    """`model_path` where this node has it; else the bytes the driver put in the object store,
    written once per node to a temporary file named by their size and hash."""
    if Path(model_path).is_file() or not shipped:
        return model_path
    import ray

    data = ray.get(shipped[0])
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = Path(tempfile.gettempdir()) / "gradcam_fast" / f"{Path(model_path).stem}-{digest}.onnx"
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as f:  # actors on the same node may race here
            f.write(data)
    return str(target)


class GradCAMPredictor:
    """Callable class for `Dataset.map_batches`: a batch {"path", "bytes"} -> a `pyarrow.Table`
    with `ROW_SCHEMA`, one row per file in the same order.

    `model_path`: the exported model (exported once by the driver, not per actor); `shipped`: an
    optional one-element list holding an ObjectRef of the model's bytes, used on nodes where the
    path does not exist. `num_threads`: ONNX Runtime intra-op threads and decoding threads (the
    actor's CPUs). `device`: None picks "cuda" when Ray assigned this actor a GPU, else "cpu".
    `classes`: explain these classes (one map each) instead of the model's top K; `top_k`: the
    top `top_k` classes only (at most K).
    `overlays_dir`: also write one overlay PNG per image and map there (a folder every node can
    write to). `session_options`: more GradCAMSession keywords (backend, precision, ...).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        num_threads: int = 1,
        device: str | None = None,
        classes: Sequence[int] | None = None,
        top_k: int | None = None,
        crop: bool = True,
        overlays_dir: str | os.PathLike | None = None,
        colormap: str = "jet",
        alpha: float = 0.5,
        shipped: list | None = None,
        tensorrt: bool = False,
        session_options: dict | None = None,
    ):
        from ..runtime.session import GradCAMSession

        if device is None:
            device = "cuda" if _assigned_gpus() else "cpu"
        self.num_threads = max(1, int(num_threads))
        torch.set_num_threads(self.num_threads)  # post-processing stays within the actor's CPUs
        path = _local_model(os.fspath(model_path), shipped)
        self.session = GradCAMSession(
            path,
            device=device,
            intra_op_threads=self.num_threads,
            tensorrt=tensorrt,
            **(session_options or {}),
        )
        meta = self.session.metadata
        preprocessing_of(meta)  # metadata no image could be preprocessed with fails here, once
        self.names = tuple(meta.categories)
        self.maps = maps_to_write(path, meta.num_targets, classes, top_k)
        self.targets = class_targets(classes, meta.num_targets)
        self.crop = crop
        self.overlays_dir = None if overlays_dir is None else Path(overlays_dir)
        if self.overlays_dir is not None:
            self.overlays_dir.mkdir(parents=True, exist_ok=True)
        self.colormap, self.alpha = colormap, alpha
        self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="gradcam-decode")

    def _decode(self, data: bytes, path: str):
        return decode(data, self.session.metadata, name=path, crop=self.crop)

    def _overlays(self, path: str, decoded, cams: np.ndarray, classes: list[int]) -> list[str]:
        """One PNG per map, named by the file's stem, a hash of its full path (files of the same
        name in different folders must not overwrite each other) and the class."""
        stem = f"{slug(Path(path).stem)}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"
        style = {"colormap": self.colormap, "alpha": self.alpha}
        written = write_overlays(
            self.overlays_dir, stem, decoded, cams, classes, self.names, **style
        )
        return [str(p) for p in written]

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        paths = [str(p) for p in batch["path"]]
        decoded = list(self._pool.map(self._decode, batch["bytes"], paths))
        good = [i for i, d in enumerate(decoded) if d.error is None]
        rows: list[dict[str, Any]] = [
            {"path": p, "error": d.error, "outputs": []}
            for p, d in zip(paths, decoded, strict=True)
        ]
        if good:
            x = model_input([decoded[i] for i in good])
            t = None if self.targets is None else self.targets.expand(len(good), -1)
            try:
                result = self.session(x, t).to("cpu")
            except NonFiniteMapsError as exc:  # those files failed; the others are fine
                result = exc.result.to("cpu")
                for b in exc.indices:
                    rows[good[b]]["error"] = f"{paths[good[b]]}: {NONFINITE}"
            probs = result.probabilities()
            lowres = result.cams_lowres[:, : self.maps].numpy()
            cams = result.cams[:, : self.maps].numpy() if self.overlays_dir is not None else None
            writes = []
            for b, i in enumerate(good):
                if rows[i]["error"] is not None:
                    continue
                explained = result.target_classes[b, : self.maps].tolist()
                rows[i].update(
                    predictions=top_predictions(probs[b], self.names),
                    explained=explained,
                    cams_lowres=lowres[b].ravel(),
                    cams_lowres_shape=list(lowres.shape[1:]),
                )
                if cams is not None:
                    job = (paths[i], decoded[i], cams[b], explained)
                    writes.append((i, self._pool.submit(self._overlays, *job)))
            for i, future in writes:
                rows[i]["outputs"] = future.result()
        return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)


def _assigned_gpus() -> list:
    """GPUs Ray assigned to this worker (none outside Ray)."""
    try:
        import ray

        return ray.get_gpu_ids() if ray.is_initialized() else []
    except ImportError:
        return []


@dataclass(frozen=True)
class ActorResources:
    """What each actor reserves from Ray, and the threads it runs with."""

    num_cpus: float
    num_gpus: float
    threads: int


def actor_resources(
    actors: int, cpus_per_actor: float | None = None, gpus_per_actor: float = 0.0
) -> ActorResources:
    """Per-actor reservations on the connected Ray cluster. By default the cluster's CPUs are
    split evenly between the actors, capped at the largest node's (an actor lives on one node).
    Reads and writes reserve no CPU (they wait on storage), so actors may take every core."""
    import ray

    if actors < 1:
        raise ValueError(f"actors must be at least 1, got {actors}")
    if cpus_per_actor is None:
        nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources().get("CPU", 1.0)
        cpus_per_actor = max(1.0, min(max(nodes, default=1.0), float(total // actors)))
    if cpus_per_actor <= 0:
        raise ValueError(f"cpus_per_actor must be positive, got {cpus_per_actor}")
    if gpus_per_actor > 0 and ray.cluster_resources().get("GPU", 0.0) < gpus_per_actor:
        raise RuntimeError(
            f"{gpus_per_actor} GPU(s) per actor asked for, but the Ray cluster has "
            f"{ray.cluster_resources().get('GPU', 0.0):g}: connect to a cluster with GPUs "
            "(RAY_ADDRESS or --address) or leave out --num-gpus-per-actor"
        )
    return ActorResources(cpus_per_actor, gpus_per_actor, max(1, int(cpus_per_actor)))


def _ship_model(model_path: Path) -> list | None:
    """The model's bytes in Ray's object store when the cluster has several nodes (workers on
    other nodes may not see the driver's file); None on one machine, where the path serves."""
    import ray

    if sum(1 for n in ray.nodes() if n.get("Alive")) <= 1:
        return None
    return [ray.put(model_path.read_bytes())]


def _num_blocks(source: str | list[str], actors: int, batch_size: int) -> int | None:
    """For a list of files, blocks of about 4 batches, at least 4 per actor (an actor takes a
    block at a time: few large blocks leave actors idle at the end); else Ray's choice."""
    if isinstance(source, str):
        return None
    wanted = max(4 * actors, math.ceil(len(source) / (4 * batch_size)))
    return max(1, min(len(source), wanted, MAX_BLOCKS))


def explain_dataset(
    source: str | Sequence[str],
    model_path: str | os.PathLike,
    *,
    actors: int = 1,
    batch_size: int = 16,
    cpus_per_actor: float | None = None,
    gpus_per_actor: float = 0.0,
    extensions: Sequence[str] | None = tuple(IMAGE_EXTENSIONS),
    classes: Sequence[int] | None = None,
    overlays_dir: str | os.PathLike | None = None,
    **options,
) -> ray.data.Dataset:
    """The lazy Ray dataset of explanations of `source` (a folder, files, or URIs Ray can read:
    s3://, gs://, local:// ...): one row per file with `ROW_SCHEMA`. Needs a connected Ray
    (`ray.init`); write it with `.write_parquet(dest)` or consume it with `.iter_batches()`.

    Only files with one of `extensions` are read (case-insensitive; default IMAGE_EXTENSIONS;
    None reads every file, for a list of files already chosen). `actors` sessions run
    at once, each with `cpus_per_actor` CPUs (default: an even share) and `gpus_per_actor` GPUs.
    `classes`, `overlays_dir` and `options` (device, top_k, crop, colormap, alpha, tensorrt,
    session_options) are `GradCAMPredictor`'s: `device` None runs an actor on CUDA when it holds
    a GPU, else on the CPU; `tensorrt` runs the GPU actors' sessions on ONNX Runtime's TensorRT
    provider; `session_options` (e.g. backend="openvino", precision="bfloat16") reach every
    actor's session.
    """
    import ray.data

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    model_path = Path(model_path)
    resources = actor_resources(actors, cpus_per_actor, gpus_per_actor)
    source = source if isinstance(source, str) else list(source)
    files = ray.data.read_binary_files(
        source,
        include_paths=True,
        file_extensions=None if extensions is None else sorted(extensions),
        num_cpus=0,
        override_num_blocks=_num_blocks(source, actors, batch_size),
    )
    return files.map_batches(
        GradCAMPredictor,
        fn_constructor_args=(str(model_path),),
        fn_constructor_kwargs={
            "num_threads": resources.threads,
            "classes": None if classes is None else list(classes),
            "overlays_dir": None if overlays_dir is None else os.fspath(overlays_dir),
            "shipped": _ship_model(model_path),
            **options,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=resources.num_cpus,
        num_gpus=resources.num_gpus or None,
    )


def read_maps(dest: str | os.PathLike) -> dict[str, np.ndarray]:
    """The low-resolution maps of a Parquet result folder: {path: float32 [K, h, w]}, for the
    files that were explained."""
    import pyarrow.parquet as pq

    table = pq.read_table(os.fspath(dest), columns=["path", "cams_lowres", "cams_lowres_shape"])
    maps = {}
    for row in table.to_pylist():
        if row["cams_lowres"] is not None:
            flat = np.asarray(row["cams_lowres"], dtype=np.float32)
            maps[row["path"]] = flat.reshape(row["cams_lowres_shape"])
    return maps
