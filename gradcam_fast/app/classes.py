"""Which classes each image's maps explain, and the top predictions recorded beside them.

Shared by `explain` (results.jsonl) and Ray (`distributed`, Parquet rows): class names or
indices resolved against the model, the number of maps to write checked against the model's K
(`num_targets`, the maps each call computes per image),
the targets padded to K, and the top-5 predictions.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence

import torch

__all__ = [
    "TOP_PREDICTIONS",
    "check_class_request",
    "class_targets",
    "maps_to_write",
    "resolve_classes",
    "top_predictions",
]

TOP_PREDICTIONS = 5


def check_class_request(classes: Sequence | None, top_k: int | None) -> None:
    """Refuse --class together with --top-k: they say two different things."""
    if classes and top_k is not None:
        raise ValueError("give either --class or --top-k, not both")


def maps_to_write(
    source: str | os.PathLike | None,
    num_targets: int,
    classes: Sequence | None = None,
    top_k: int | None = None,
) -> int:
    """How many of an image's maps to write: one per class, else `top_k`, else all of the model's
    K (`num_targets`).
    A model computing fewer than asked for is refused with the fix; one computing more serves
    (the extra maps are computed, not written)."""
    check_class_request(classes, top_k)
    wanted = len(classes) if classes else top_k
    if wanted is not None and wanted > num_targets:
        what = f"{wanted} classes (--class)" if classes else f"--top-k {wanted}"
        raise ValueError(
            f"{source} computes {num_targets} map(s) per image, fewer than the {what} asked "
            f"for: export a model with -k {wanted}, or leave out --model to have one made"
        )
    return wanted or num_targets


def class_targets(classes: Sequence[int] | None, num_targets: int) -> torch.Tensor | None:
    """Targets [K] for `classes`, padded to the model's K with the last class (the padding maps
    are not written); None (the top K classes) without classes."""
    if not classes:
        return None
    padded = list(classes) + [classes[-1]] * (num_targets - len(classes))
    return torch.tensor(padded, dtype=torch.int64)


def top_predictions(probs: torch.Tensor, names: Sequence[str]) -> list[dict]:
    """The TOP_PREDICTIONS most likely classes of one image's probabilities [num_classes]:
    index, name (None without class names) and probability rounded to 6 decimals."""
    top = probs.topk(min(TOP_PREDICTIONS, probs.numel()))
    return [
        {"index": int(i), "name": names[i] if names else None, "probability": round(float(p), 6)}
        for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
    ]


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
