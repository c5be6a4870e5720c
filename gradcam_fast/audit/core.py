"""`audit(session, images, boxes=..., metrics=[...])`: localization and faithfulness metrics of
a session's maps, one row per image and class, using only the session's API and metadata (so
it serves every model the session runs).

Per batch: one session call gives each row's map and the probability p0 of its class; the maps
are placed on the original image's pixels (`images.cam_to_image`: the crop's map resized onto
the part of the image the model saw, zero where the center crop cut it off), where the
annotations' boxes are, for the localization metrics; the faithfulness metrics perturb the
model's S x S input, guided by the map on those pixels, and run the perturbed images as
batches through the same session. Rows are plain dicts (JSON-ready).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..app.steps import Decoded
from ..check.finite import NONFINITE, NonFiniteMapsError
from ..format.protocols import Session
from ..io.images import cam_to_image, to_tensor
from .annotations import ObjectAnnotation
from .faithfulness import auc, confidence_change, deletion_insertion, road
from .localization import (
    BOX_THRESHOLD,
    IOU_HIT,
    POINTING_TOLERANCE,
    box_localization,
    energy,
    pointing_game,
)
from .regions import class_regions

__all__ = [
    "FAITHFULNESS",
    "LOCALIZATION",
    "METRICS",
    "AuditItem",
    "AuditSettings",
    "audit_items",
    "session_scorer",
]

LOCALIZATION = ("pointing", "energy", "localization")
FAITHFULNESS = ("deletion", "insertion", "drop", "road")
METRICS = LOCALIZATION + FAITHFULNESS
ROUND = 6


@dataclass(frozen=True)
class AuditSettings:
    """How the metrics are computed (recorded in summary.json; a resumed run must match)."""

    metrics: tuple[str, ...] = METRICS
    steps: int = 20  # deletion/insertion points (S)
    baseline: str = "blur"  # "blur" or "constant": what deleted pixels become
    tolerance: float = POINTING_TOLERANCE  # pointing game, original pixels
    threshold: float = BOX_THRESHOLD  # box localization: share of the map's maximum
    method: str | None = None  # CAM method (None: the session's default)
    road_noise: float = 0.01
    batch_size: int = 16  # images per session call, perturbed images included
    crop: bool = True  # resize + center crop (torchvision's), else resize to S x S

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}: choose from {', '.join(METRICS)}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be at least 1")
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")


@dataclass
class AuditItem:
    """One image to audit: its key (path), decoded pixels (`steps.decode(..., keep_original=True)`)
    and its resolved annotations (none: the predicted class, faithfulness only)."""

    key: str
    decoded: Decoded
    objects: list[ObjectAnnotation] = field(default_factory=list)


def session_scorer(session: Session, batch_size: int, method: str | None = None):
    """`score(x, classes) -> probabilities [N]` on the session's forward, at most `batch_size`
    images per call; x is normalized [N, 3, S, S] (turned back into uint8 pixels for models
    that take raw pixels: rounded and clipped)."""
    meta = session.metadata
    k = meta.num_targets
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)

    def score(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, x.shape[0], batch_size):
            xi, ci = x[i : i + batch_size], classes[i : i + batch_size]
            if meta.input_format == "uint8_nhwc":
                xi = ((xi * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
                xi = xi.permute(0, 2, 3, 1).contiguous()
            result = session(xi, ci[:, None].expand(-1, k).contiguous(), method=method)
            probs = torch.softmax(result.logits.float().cpu(), dim=1)
            out.append(probs.gather(1, ci[:, None].cpu())[:, 0])
        return torch.cat(out)

    return score


def _input(decoded: Decoded, meta) -> torch.Tensor:
    if decoded.tensor is not None:
        return decoded.tensor
    return to_tensor(decoded.view, meta.mean, meta.std)


def _r(value) -> float | None:
    return None if value is None else round(float(value), ROUND)


def _localize(
    row: dict, cam: np.ndarray, decoded: Decoded, region, settings: AuditSettings
) -> None:
    placed = np.nan_to_num(cam_to_image(cam, decoded.crop), nan=0.0)
    if "pointing" in settings.metrics:
        row["pointing"] = _r(pointing_game(placed, region.mask, settings.tolerance))
    if "energy" in settings.metrics:
        row["energy"] = _r(energy(placed, region.mask))
    if "localization" in settings.metrics:
        iou, found = box_localization(placed, region.boxes, settings.threshold)
        row["box_iou"] = _r(iou)
        row["localization"] = None if iou is None else float(iou >= IOU_HIT)
        row["map_box"] = None if found is None else [round(v, 2) for v in found]


def _rows_of(items: Sequence[AuditItem]) -> tuple[list, list]:
    """(rows to compute: (item index, class or -1 for the predicted one, region), error rows)."""
    todo, errors = [], []
    for i, item in enumerate(items):
        if item.decoded.error is not None:
            errors.append({"path": item.key, "error": item.decoded.error})
            continue
        if not item.objects:
            todo.append((i, -1, None))
            continue
        width, height = item.decoded.crop.original
        regions, issues = class_regions(item.objects, width, height)
        for issue in issues:
            errors.append({"path": item.key, "where": issue.where, "error": str(issue)})
        for cls, region in regions.items():
            todo.append((i, cls, region))
    return todo, errors


def audit_items(
    session: Session, items: Sequence[AuditItem], settings: AuditSettings = AuditSettings()
) -> list[dict]:
    """The rows of a batch of items: one per (image, annotated class) (the predicted class for
    images without annotations), and one per error (an unreadable image, a bad object, outputs
    that are not finite), each with "path" and "error"."""
    meta = session.metadata
    names = tuple(meta.categories)
    todo, errors = _rows_of(items)
    if not todo:
        return errors
    x = torch.stack([_input(items[i].decoded, meta) for i, _, _ in todo])
    wanted = torch.tensor([c for _, c, _ in todo], dtype=torch.int64)
    score = session_scorer(session, settings.batch_size, settings.method)
    results = []
    bad: set[int] = set()
    for s in range(0, len(todo), settings.batch_size):
        xi = x[s : s + settings.batch_size]
        if meta.input_format == "uint8_nhwc":
            xi = torch.from_numpy(
                np.stack([items[i].decoded.view for i, _, _ in todo[s : s + len(xi)]])
            )
        t = wanted[s : s + len(xi), None].expand(-1, meta.num_targets).contiguous()
        try:
            result = session(xi, t, method=settings.method).to("cpu")
        except NonFiniteMapsError as exc:
            result = exc.result.to("cpu")
            bad.update(s + b for b in exc.indices)
        results.append(result)
    cams = torch.cat([r.cams[:, 0] for r in results]).float()
    logits = torch.cat([r.logits for r in results]).float()
    classes = torch.cat([r.target_classes[:, 0] for r in results])
    probs = torch.softmax(logits, dim=1)
    p0 = probs.gather(1, classes[:, None])[:, 0]
    rows = []
    for j, (i, _, region) in enumerate(todo):
        item, c = items[i], int(classes[j])
        if j in bad:
            errors.append({"path": item.key, "class": c, "error": f"{item.key}: {NONFINITE}"})
            continue
        row = {
            "path": item.key,
            "class": c,
            "name": names[c] if names else None,
            "probability": _r(p0[j]),
            "predicted": int(probs[j].argmax()),
            "annotated": region is not None,
        }
        if region is not None:
            row["objects"] = len(region.boxes)
            row["where"] = region.where
            if region.clipped:
                row["clipped_boxes"] = region.clipped
            _localize(row, cams[j].numpy(), item.decoded, region, settings)
        rows.append(row)
    good = [j for j in range(len(todo)) if j not in bad]
    if good and any(m in settings.metrics for m in FAITHFULNESS):
        _faithfulness(
            rows, score, x[good], cams[good], classes[good], p0[good], todo, items, good, settings
        )
    return rows + errors


def _faithfulness(rows, score, x, cams, classes, p0, todo, items, good, settings) -> None:
    m, bs = settings.metrics, settings.batch_size
    if "deletion" in m or "insertion" in m:
        fractions, dele, ins = deletion_insertion(
            score,
            x,
            cams,
            classes,
            p0,
            steps=settings.steps,
            baseline=settings.baseline,
            batch_size=bs,
        )
        for row, d, i in zip(rows, dele, ins, strict=True):
            if "deletion" in m:
                row["deletion"] = _r(auc(d, fractions))
                row["deletion_curve"] = [round(v, ROUND) for v in d.tolist()]
            if "insertion" in m:
                row["insertion"] = _r(auc(i, fractions))
                row["insertion_curve"] = [round(v, ROUND) for v in i.tolist()]
    if "drop" in m:
        drop, increase = confidence_change(score, x, cams, classes, p0, batch_size=bs)
        for row, d, i in zip(rows, drop.tolist(), increase.tolist(), strict=True):
            row["drop"], row["increase"] = _r(d), float(i)
    if "road" in m:
        seeds = [
            zlib.crc32(f"{items[todo[j][0]].key}:{int(c)}".encode())
            for j, c in zip(good, classes, strict=True)
        ]
        morf, lerf = road(
            score, x, cams, classes, p0, noise=settings.road_noise, seeds=seeds, batch_size=bs
        )
        for row, a, b in zip(rows, morf.tolist(), lerf.tolist(), strict=True):
            row["road_morf"], row["road_lerf"], row["road"] = _r(a), _r(b), _r((b - a) / 2)
