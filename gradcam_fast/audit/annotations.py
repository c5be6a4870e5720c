"""Reading object annotations (COCO JSON, a folder of Pascal VOC XML files, a CSV) and mapping
their class labels onto a model's classes.

Every object keeps where it came from (`where`: "file:line" or "file: annotation id N"), so a
problem with it is reported there. A broken object (a row with the wrong number of fields, a
box that is not numbers, an XML file that does not parse) becomes an `AnnotationIssue` and the
others are kept; a file that cannot be read at all raises `AnnotationError`.
"""

from __future__ import annotations

import csv
import json
import os
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = [
    "AnnotationError",
    "AnnotationIssue",
    "Annotations",
    "ObjectAnnotation",
    "load_annotations",
    "read_class_map",
    "resolve_labels",
]


class AnnotationError(ValueError):
    """An annotation file that cannot be read at all (missing, not JSON, no usable content)."""


@dataclass(frozen=True)
class ObjectAnnotation:
    """One annotated object of one image, in the original image's pixels."""

    file: str  # the image, as the annotation names it (relative to the images' folder)
    label: str  # the class as written in the annotation (a name, an id or an index)
    box: tuple[float, float, float, float] | None  # x0, y0, x1, y1 (continuous pixel edges)
    where: str  # "ann.csv:12", "instances.json: annotation id 7", "xml/0001.xml"
    polygons: tuple[tuple[float, ...], ...] = ()  # COCO polygons, [x1, y1, x2, y2, ...] each
    rle: dict | None = None  # COCO run-length encoding {"size": [h, w], "counts": ...}
    size: tuple[int, int] | None = None  # (width, height) the annotation states, if any
    cls: int | None = None  # the model's class index, once resolved

    @property
    def has_mask(self) -> bool:
        return bool(self.polygons) or self.rle is not None


@dataclass(frozen=True)
class AnnotationIssue:
    """A problem with one object or file of the annotations; the rest is still audited."""

    where: str
    message: str
    file: str | None = None  # the image concerned, when known

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class Annotations:
    objects: list[ObjectAnnotation]
    issues: list[AnnotationIssue]

    def files(self) -> list[str]:
        """The annotated image files, in first-seen order."""
        return list(dict.fromkeys(o.file for o in self.objects))


# What a malformed value in an annotation raises while it is read (1e400 is inf in JSON, and
# int(inf) raises OverflowError): that object is an issue, the file is still read.
_BAD_VALUE = (AttributeError, TypeError, ValueError, OverflowError, KeyError, IndexError)


def _box(values: Sequence, where: str) -> tuple[float, float, float, float]:
    try:
        box = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"box {list(values)} is not four numbers") from None
    if len(box) != 4 or any(v != v or v in (float("inf"), float("-inf")) for v in box):
        raise ValueError(f"box {list(values)} is not four finite numbers")
    return box  # type: ignore[return-value]


_HEADER = ("file", "filename", "file_name", "path", "image")


def _read_csv(path: Path) -> Annotations:
    """CSV rows `file,class,x0,y0,x1,y1` (a header row naming `file` is skipped when it is the
    first row, after any blank or `#` comment lines)."""
    objects, issues = [], []
    first = True
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            where = f"{path}:{line}"
            if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                continue
            header, first = first and row[0].strip().lower() in _HEADER, False
            if header:
                continue
            if len(row) != 6:
                issues.append(
                    AnnotationIssue(
                        where, f"expected 6 fields file,class,x0,y0,x1,y1, got {len(row)}"
                    )
                )
                continue
            try:
                box = _box(row[2:], where)
            except ValueError as exc:
                issues.append(AnnotationIssue(where, str(exc), row[0].strip()))
                continue
            objects.append(ObjectAnnotation(row[0].strip(), row[1].strip(), box, where))
    return Annotations(objects, issues)


def _voc_size(root: ET.Element) -> tuple[int, int] | None:
    """<size>'s (width, height); None when absent, not numbers, or not positive (some tools
    write 0 there for "unknown")."""
    values = [root.findtext(f"size/{k}") for k in ("width", "height")]
    try:
        width, height = (int(float(v)) for v in values)  # type: ignore[arg-type]
    except _BAD_VALUE:
        return None
    return (width, height) if width > 0 and height > 0 else None


def _read_voc_file(path: Path) -> tuple[list[ObjectAnnotation], list[AnnotationIssue]]:
    """One Pascal VOC XML file. VOC boxes are 1-based and inclusive: pixel columns xmin..xmax
    are the edges [xmin - 1, xmax) here. An object without a usable <bndbox> is an issue of its
    own ("file: object N"); the file's other objects are kept."""
    root = ET.parse(path).getroot()
    name = (root.findtext("filename") or "").strip()
    if not name:
        raise ValueError("no <filename>")
    size = _voc_size(root)
    objects, issues = [], []
    for n, obj in enumerate(root.iter("object"), start=1):
        where = f"{path}: object {n}"
        label = (obj.findtext("name") or "").strip()
        bnd = obj.find("bndbox")
        try:
            if bnd is None:
                raise ValueError("no <bndbox>")
            keys = ("xmin", "ymin", "xmax", "ymax")
            values = [bnd.findtext(k) for k in keys]
            missing = [k for k, v in zip(keys, values, strict=True) if v is None]
            if missing:
                raise ValueError(f"<bndbox> has no <{'>, <'.join(missing)}>")
            x0, y0, x1, y1 = _box(values, where)
        except ValueError as exc:
            issues.append(AnnotationIssue(where, str(exc), name))
            continue
        objects.append(ObjectAnnotation(name, label, (x0 - 1, y0 - 1, x1, y1), where, size=size))
    return objects, issues


def _read_voc(folder: Path) -> Annotations:
    objects, issues = [], []
    files = sorted(folder.rglob("*.xml"))
    if not files:
        raise AnnotationError(f"{folder}: no .xml files (expected Pascal VOC annotations)")
    for path in files:
        try:
            found, problems = _read_voc_file(path)
        except (ET.ParseError, ValueError) as exc:
            issues.append(AnnotationIssue(str(path), f"cannot read this VOC file: {exc}"))
            continue
        objects.extend(found)
        issues.extend(problems)
    return Annotations(objects, issues)


def _read_coco(path: Path) -> Annotations:
    """A COCO file: its `annotations` and `images` lists are required (without `images` no
    annotation can name its file), `categories` is optional (category ids are then labels)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM, as editors may write
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise AnnotationError(f"{path}: not a COCO file (no 'annotations' list)")
    if not isinstance(data.get("images"), list):
        raise AnnotationError(f"{path}: not a COCO file (no 'images' list)")
    if not isinstance(data.get("categories", []), list):
        raise AnnotationError(f"{path}: not a COCO file ('categories' is not a list)")
    images = {im.get("id"): im for im in data["images"] if isinstance(im, dict)}
    names = {c.get("id"): c.get("name") for c in data.get("categories", []) if isinstance(c, dict)}
    objects, issues = [], []
    for n, ann in enumerate(data["annotations"]):
        ident = ann.get("id", f"#{n}") if isinstance(ann, dict) else f"#{n}"
        where = f"{path}: annotation id {ident}"
        try:
            image = images.get(ann.get("image_id"))
            if image is None:
                raise ValueError(f"image_id {ann.get('image_id')!r} is not in 'images'")
            category = ann.get("category_id")
            label = names.get(category)
            label = str(category) if label is None else str(label)
            bbox = ann.get("bbox")
            box = None
            if bbox is not None:
                x, y, w, h = _box(bbox, where)
                box = (x, y, x + w, y + h)
            seg = ann.get("segmentation")
            polygons, rle = (), None
            if isinstance(seg, list):
                polygons = tuple(tuple(float(v) for v in poly) for poly in seg)
            elif isinstance(seg, dict):
                rle = seg
            if box is None and not polygons and rle is None:
                raise ValueError("neither a bbox nor a segmentation")
            size = None
            if "width" in image and "height" in image:
                size = (int(image["width"]), int(image["height"]))
            file = str(image.get("file_name", ""))
            objects.append(ObjectAnnotation(file, label, box, where, polygons, rle, size))
        except _BAD_VALUE as exc:
            issues.append(AnnotationIssue(where, str(exc)))
    return Annotations(objects, issues)


def load_annotations(path: str | os.PathLike) -> Annotations:
    """Objects from a COCO JSON file, a folder of Pascal VOC XML files, or a CSV file
    (`file,class,x0,y0,x1,y1`), chosen by what `path` is."""
    path = Path(path)
    if path.is_dir():
        return _read_voc(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such annotation file or folder")
    try:
        if path.suffix.lower() == ".json":
            return _read_coco(path)
        if path.suffix.lower() in (".csv", ".txt"):
            return _read_csv(path)
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{path}: not a text file ({exc.reason})") from None
    raise AnnotationError(
        f"{path}: unknown annotation format (expected a COCO .json, a .csv or a folder of "
        "Pascal VOC .xml files)"
    )


def read_class_map(path: str | os.PathLike) -> list[str]:
    """Annotation labels by model class index: line i's first word labels class i (the format
    of ImageNet's LOC_synset_mapping.txt: `n01440764 tench, Tinca tinca`)."""
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise AnnotationError(
                f"{path}:{number}: a blank line: line i labels class i - 1, so it would shift "
                "every later class; remove it (or write a label there)"
            )
    return [line.split()[0] for line in lines]


def _normalize(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def resolve_labels(
    annotations: Annotations,
    categories: Sequence[str],
    num_classes: int,
    class_map: Sequence[str] | None = None,
) -> tuple[Annotations, list[str]]:
    """The objects with `cls` set to the model's class: by `class_map` label, else by class name
    (case, underscores and spaces ignored), else by index. Objects whose label matches nothing
    become issues; the second value lists the unmatched labels with their counts (for one clear
    message). Raises AnnotationError when no label matches at all."""
    if class_map is not None and len(class_map) > num_classes:
        raise AnnotationError(
            f"the class map has {len(class_map)} labels, the model only {num_classes} classes: "
            "is it another model's? It needs one line per class index, in the model's order"
        )
    table: dict[str, int] = {}
    for index, name in enumerate(categories):
        table.setdefault(_normalize(name), index)
    for index, label in enumerate(class_map or ()):
        table[_normalize(label)] = index
    resolved, issues, missing = [], list(annotations.issues), Counter()
    for obj in annotations.objects:
        key = _normalize(obj.label)
        index = table.get(key)
        if index is None and re.fullmatch(r"\d+", key) and int(key) < num_classes:
            index = int(key)
        if index is None:
            missing[obj.label] += 1
            issues.append(
                AnnotationIssue(
                    obj.where, f"class {obj.label!r} is not one of the model's", obj.file
                )
            )
            continue
        resolved.append(replace(obj, cls=index))
    unmatched = [f"{label!r} ({n})" for label, n in missing.most_common()]
    if annotations.objects and not resolved:
        known = ", ".join(repr(c) for c in list(categories)[:8]) or f"indices 0..{num_classes - 1}"
        raise AnnotationError(
            f"no annotation class matches the model's classes: {', '.join(unmatched[:10])}; "
            f"the model's are {known}{', ...' if len(categories) > 8 else ''} (give names, "
            "indices, or --class-map FILE with one label per class index)"
        )
    return Annotations(resolved, issues), unmatched
