"""The dataset's and each class's means of every metric, with bootstrap confidence intervals,
and the order "worst first" that the report uses.

A confidence interval is the percentile bootstrap (Efron): the rows are resampled with
replacement `resamples` times (seeded, so a rerun gives the same interval), the mean taken each
time, and the `(1 - level) / 2` and `(1 + level) / 2` quantiles of those means reported. Rows
where a metric is undefined (None: a map with no mass) are left out of that metric's mean.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

__all__ = ["SCORES", "bootstrap_mean", "rank_value", "summarize"]

# the per-row figures summarized, and whether higher is better
SCORES = {
    "pointing": True,
    "energy": True,
    "localization": True,
    "box_iou": True,
    "deletion": False,
    "insertion": True,
    "drop": False,
    "increase": True,
    "road_morf": False,
    "road_lerf": True,
    "road": True,
}


def bootstrap_mean(
    values: Sequence[float], resamples: int = 1000, level: float = 0.95, seed: int = 0
) -> dict:
    """{"mean", "low", "high", "n"} of `values` (low = high = mean for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0}
    if not np.isfinite(v).all():
        raise ValueError("bootstrap_mean: values must be finite")
    idx = np.random.default_rng(seed).integers(0, v.size, size=(resamples, v.size))
    means = v[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": float(v.mean()), "low": float(lo), "high": float(hi), "n": int(v.size)}


def rank_value(row: dict) -> float | None:
    """How good a row is, for sorting worst first: the energy share where annotated, else the
    pointing game, else insertion minus deletion, else minus the drop in confidence, else ROAD
    ((LeRF - MoRF) / 2: higher is better)."""
    if row.get("energy") is not None:
        return row["energy"]
    if row.get("pointing") is not None:
        return row["pointing"]
    if row.get("insertion") is not None and row.get("deletion") is not None:
        return row["insertion"] - row["deletion"]
    if row.get("drop") is not None:
        return -row["drop"]
    if row.get("road") is not None:
        return row["road"]
    return None


def _means(rows: Sequence[dict], resamples: int) -> dict:
    out = {}
    for key in SCORES:
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            out[key] = bootstrap_mean(values, resamples)
    return out


def summarize(rows: Sequence[dict], names: Sequence[str] = (), resamples: int = 1000) -> dict:
    """{"images", "rows", "errors", "overall": {metric: mean and CI}, "classes": [per class,
    sorted worst first by the mean `rank_value`]}."""
    good = [r for r in rows if "error" not in r]
    by_class: dict[int, list[dict]] = defaultdict(list)
    for r in good:
        by_class[r["class"]].append(r)
    classes = []
    for cls, members in by_class.items():
        ranks = [v for r in members if (v := rank_value(r)) is not None]
        classes.append(
            {
                "class": cls,
                "name": names[cls] if names else None,
                "rows": len(members),
                "rank": float(np.mean(ranks)) if ranks else None,
                "metrics": _means(members, resamples),
            }
        )
    classes.sort(key=lambda c: (c["rank"] is None, c["rank"] if c["rank"] is not None else 0.0))
    return {
        "images": len({r["path"] for r in good}),
        "rows": len(good),
        "errors": len(rows) - len(good),
        "overall": _means(good, resamples),
        "higher_is_better": SCORES,
        "classes": classes,
    }
