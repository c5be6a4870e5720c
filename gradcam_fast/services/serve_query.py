"""The query of `POST /explain` (docs/serving.md), checked against the served model, and the
small pieces of its answer.

Separate from the deployment so that it reads, and is tested, without Ray: every way a query can
ask for what the model cannot give is an `HTTPError` 400 naming the problem.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from ..app.classes import resolve_classes, top_predictions
from ..format.metadata import ModelMetadata
from ..model.catalog import METHOD_NAMES

__all__ = [
    "QUERY_PARAMETERS",
    "ExplainQuery",
    "HTTPError",
    "answer_predictions",
    "parse_query",
    "require_method",
]

QUERY_PARAMETERS = ("class", "top_k", "method", "overlay")


class HTTPError(Exception):
    """A request that cannot be served: its HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ExplainQuery(NamedTuple):
    """What one request asks of the session."""

    targets: list[int]  # K session targets: classes (padded with the last) or ranks -1..-K
    maps: int  # how many of the K maps are returned
    method: str
    overlay: bool  # overlay PNGs asked for


def parse_query(query: Any, meta: ModelMetadata) -> ExplainQuery:
    """`query` (starlette's QueryParams: `keys`, `get`, `getlist`) as an `ExplainQuery` for a
    model described by `meta`; HTTPError 400 for anything the model cannot do."""
    unknown = sorted(set(query.keys()) - set(QUERY_PARAMETERS))
    if unknown:
        raise HTTPError(
            400,
            f"unknown query parameter(s) {', '.join(unknown)}; this endpoint takes "
            f"{', '.join(QUERY_PARAMETERS)}",
        )
    k = meta.num_targets
    classes = query.getlist("class")
    top_k = query.get("top_k")
    if classes and top_k is not None:
        raise HTTPError(400, "give either class or top_k, not both")
    if classes:
        try:
            resolved = resolve_classes(classes, meta.categories, meta.num_classes)
        except ValueError as exc:  # its messages speak of --class: say class= here
            raise HTTPError(400, str(exc).replace("--class ", "class=")) from None
        if len(resolved) > k:
            raise HTTPError(
                400,
                f"{len(resolved)} classes asked for; this model gives at most {k} per image",
            )
        targets = resolved + [resolved[-1]] * (k - len(resolved))
        maps = len(resolved)
    else:
        maps = 1
        if top_k is not None:
            try:
                maps = int(top_k)
            except ValueError:
                raise HTTPError(400, f"top_k={top_k!r} is not an integer") from None
            if not 1 <= maps <= k:
                raise HTTPError(400, f"top_k={maps}: this model gives 1 to {k} map(s) per image")
        targets = list(range(-1, -k - 1, -1))
    exported = meta.method or "gradcam"  # a maps model computes its maps for this method only
    method = query.get("method", exported if meta.maps else "gradcam")
    if method not in METHOD_NAMES:
        raise HTTPError(400, f"unknown method {method!r}; choose one of {', '.join(METHOD_NAMES)}")
    if method != "gradcam" and meta.channel_weights_only:
        raise HTTPError(
            400,
            f"method {method!r} needs the gradients, and this server's model outputs "
            "Grad-CAM's channel weights only: use method=gradcam",
        )
    if meta.maps and method != exported:
        raise HTTPError(
            400, f"method {method!r}: this server's model computes {exported} maps in its graph"
        )
    overlay = query.get("overlay")
    if overlay not in (None, "png"):
        raise HTTPError(400, f"overlay={overlay!r}: the only overlay format is png")
    return ExplainQuery(targets, maps, method, overlay == "png")


def require_method(method: str, allowed: str) -> None:
    """A 405 for a route asked with another HTTP method."""
    if method != allowed:
        raise HTTPError(405, f"{method} is not allowed here; use {allowed}")


def answer_predictions(probabilities, names: Sequence[str]) -> list[dict[str, Any]]:
    """The top-5 classes as {"class", "name", "probability"} (explain's rows, with the index
    under "class" as this API names it)."""
    return [
        {"class": p["index"], "name": p["name"], "probability": p["probability"]}
        for p in top_predictions(probabilities, names)
    ]
