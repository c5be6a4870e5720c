"""The Python front of the audit: `audit(session, images, boxes=..., metrics=[...])`.

`images` are paths, bytes or PIL images; `boxes` says where the objects are, in each image's
original pixels: a list parallel to `images` of lists of (class, x0, y0, x1, y1), with a class
index or name; a dict from path to such lists; or `Annotations` read by `load_annotations`
(matched to `images` by file name). Without boxes, each image is audited for its predicted class
with the faithfulness metrics only.
"""

from __future__ import annotations

import io
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

from ..app.steps import Decoded, decode
from ..format.protocols import Session
from .annotations import AnnotationIssue, Annotations, ObjectAnnotation, resolve_labels
from .core import METRICS, AuditItem, AuditSettings, audit_items

__all__ = ["audit", "decode_image", "match_annotations"]

Source = str | os.PathLike | bytes | Image.Image


def decode_image(source: Source, meta, crop: bool = True, name: str | None = None) -> Decoded:
    """`steps.decode` (the model's own preprocessing) for paths and bytes; PIL images go through
    it as lossless PNG bytes, so that an image given in memory is preprocessed exactly as the
    same image read from a file (a few ms per image, for one code path)."""
    if isinstance(source, Image.Image):
        buffer = io.BytesIO()
        source.save(buffer, format="PNG", compress_level=0)
        return decode(buffer.getvalue(), meta, name=name or "<PIL image>", crop=crop)
    return decode(source, meta, name=name, crop=crop)


def _key(source: Source, index: int) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return f"image {index}"


def _nfc(text: str) -> str:
    """Unicode NFC: the same name typed on one system and stored as NFD on another (macOS)."""
    return unicodedata.normalize("NFC", text)


def match_annotations(
    keys: Sequence[str], annotations: Annotations, roots: Sequence[str | os.PathLike] = ()
) -> tuple[dict[str, list[ObjectAnnotation]], list[AnnotationIssue]]:
    """Objects per image key: an annotation's file matches a key by its path relative to one of
    `roots`, its path as given, or (when unique) its base name; a name without an extension
    (ImageNet's LOC XML files write `ILSVRC2012_val_00000001`) by the base name without one.
    Names are compared in Unicode NFC. Annotations naming a file not among `keys`, or a base
    name that several files share, become issues."""
    index: dict[str, str] = {}
    names: dict[str, list[str]] = {}
    stems: dict[str, list[str]] = {}
    roots = [Path(_nfc(os.fspath(root))) for root in roots]
    for key in keys:
        p = Path(_nfc(key))
        index[p.as_posix()] = key
        for root in roots:
            if p.is_relative_to(root):
                index[p.relative_to(root).as_posix()] = key
        names.setdefault(p.name, []).append(key)
        stems.setdefault(p.stem, []).append(key)
    found: dict[str, list[ObjectAnnotation]] = {}
    issues: list[AnnotationIssue] = []
    for obj in annotations.objects:
        wanted = Path(_nfc(obj.file).removeprefix("./"))
        key = index.get(wanted.as_posix())
        same = names.get(wanted.name, []) if wanted.suffix else stems.get(wanted.name, [])
        if key is None and len(same) == 1:
            key = same[0]
        if key is None:
            message = f"no such image file: {obj.file}"
            if len(same) > 1:
                message = (
                    f"{obj.file} could be any of {len(same)} files ({', '.join(same[:3])}"
                    f"{', ...' if len(same) > 3 else ''}): give its path relative to SOURCE"
                )
            issues.append(AnnotationIssue(obj.where, message, obj.file))
            continue
        found.setdefault(key, []).append(obj)
    return found, issues


def _from_boxes(keys: Sequence[str], boxes) -> Annotations:
    if isinstance(boxes, Annotations):
        return boxes
    pairs: Iterable = boxes.items() if isinstance(boxes, Mapping) else zip(keys, boxes, strict=True)
    objects = []
    for key, listed in pairs:
        for n, (label, *box) in enumerate(listed or ()):
            where = f"boxes[{key!s}][{n}]"
            objects.append(
                ObjectAnnotation(str(key), str(label), tuple(float(v) for v in box), where)
            )
    return Annotations(objects, [])


def audit(
    session: Session,
    images: Sequence[Source],
    boxes=None,
    metrics: Sequence[str] | None = None,
    *,
    class_map: Sequence[str] | None = None,
    progress: bool = False,
    **settings,
) -> list[dict]:
    """One row per image and annotated class (or per image, for its predicted class, without
    boxes), plus one row per error ("path", "error"). `metrics`: names in `core.METRICS`
    (default: all that the boxes allow). `settings`: `AuditSettings` fields (steps, baseline,
    tolerance, threshold, method, road_noise, batch_size, crop)."""
    from tqdm import tqdm

    if metrics is None:
        metrics = (
            METRICS
            if boxes is not None
            else tuple(m for m in METRICS if m not in ("pointing", "energy", "localization"))
        )
    config = AuditSettings(metrics=tuple(metrics), **settings)
    meta = session.metadata
    keys = [_key(s, i) for i, s in enumerate(images)]
    objects: dict[str, list[ObjectAnnotation]] = {}
    rows: list[dict] = []
    if boxes is not None:
        resolved, _ = resolve_labels(
            _from_boxes(keys, boxes), meta.categories, meta.num_classes, class_map
        )
        objects, missing = match_annotations(keys, resolved)
        for issue in [*resolved.issues, *missing]:
            rows.append({"path": issue.file, "where": issue.where, "error": str(issue)})
    step = config.batch_size
    for start in tqdm(range(0, len(images), step), disable=not progress, desc="audit"):
        items = []
        for i in range(start, min(start + step, len(images))):
            if boxes is not None and keys[i] not in objects:
                continue  # nothing annotated in it
            name = keys[i] if isinstance(images[i], bytes) else None
            decoded = decode_image(images[i], meta, config.crop, name)
            items.append(
                AuditItem(keys[i], decoded, [replace(o) for o in objects.get(keys[i], [])])
            )
        if items:
            rows += audit_items(session, items, config)
    return rows
