"""The audit on Ray Data: one GradCAMSession per actor, as `explain-dataset` runs them.

`ray_runner(model_path, settings, ...)` is a runner for `run.audit_folder`: the image paths
and their annotations (as JSON) become a Ray dataset; a pool of `AuditActor`s, each with its
own session (ONNX Runtime threads = its CPUs), decodes and audits them in batches with the same
`audit_items` as the local run, and the rows come back to the driver, which writes them. The
files must be readable at the same path by every node (a shared folder on a cluster).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np

from .annotations import ObjectAnnotation
from .core import AuditItem, AuditSettings, audit_items

__all__ = ["AuditActor", "ray_runner"]


class AuditActor:
    """Callable class for `Dataset.map_batches`: {"key", "objects"} -> {"key", "rows"} (the
    rows of each image as one JSON string)."""

    def __init__(self, model_path: str, settings: dict, num_threads: int = 1):
        import torch

        from ..runtime.session import GradCAMSession

        torch.set_num_threads(max(1, num_threads))
        self.session = GradCAMSession(
            model_path, device="cpu", intra_op_threads=max(1, num_threads)
        )
        self.settings = AuditSettings(**{**settings, "metrics": tuple(settings["metrics"])})

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..app.steps import decode

        meta = self.session.metadata
        items = []
        for key, objects in zip(batch["key"], batch["objects"], strict=True):
            objs = [ObjectAnnotation(**_thaw(o)) for o in json.loads(objects)]
            items.append(AuditItem(str(key), decode(str(key), meta, crop=self.settings.crop), objs))
        rows = audit_items(self.session, items, self.settings)
        by_key = {str(k): [] for k in batch["key"]}
        for row in rows:
            by_key.setdefault(row.get("path"), []).append(row)
        return {
            "key": np.array(list(by_key), dtype=object),
            "rows": np.array([json.dumps(v) for v in by_key.values()], dtype=object),
        }


def _thaw(o: dict) -> dict:
    o = dict(o)
    for name in ("box", "size"):
        if o.get(name) is not None:
            o[name] = tuple(o[name])
    o["polygons"] = tuple(tuple(p) for p in o.get("polygons", ()))
    return o


def ray_runner(
    model_path: str | os.PathLike,
    settings: AuditSettings,
    *,
    actors: int = 1,
    cpus_per_actor: float | None = None,
):
    """A runner for `run.audit_folder` that audits on Ray Data (needs a connected Ray)."""

    def run(keys: Sequence[str], objects: dict) -> Iterator[tuple[int, list[dict]]]:
        import ray.data

        from ..services.ray_data import actor_resources

        if not keys:
            return
        resources = actor_resources(actors, cpus_per_actor)
        items = [
            {"key": k, "objects": json.dumps([dataclasses.asdict(o) for o in objects.get(k, [])])}
            for k in keys
        ]
        blocks = max(1, min(len(items), 4 * actors, -(-len(items) // settings.batch_size)))
        dataset = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            AuditActor,
            fn_constructor_args=(os.fspath(model_path), dataclasses.asdict(settings)),
            fn_constructor_kwargs={"num_threads": resources.threads},
            batch_size=settings.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=resources.num_cpus,
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            rows = [r for text in batch["rows"] for r in json.loads(text)]
            yield len(batch["key"]), rows

    return run
