"""Auditing a model's maps over a dataset: do they fall on the objects (localization), and do
they point at what the model's answer depends on (faithfulness)?

`audit(session, images, boxes=..., metrics=[...])` returns one row per image and class;
`audit_folder` (run.py) is what `gradcam-fast audit` runs: files in, DIR/images.jsonl,
summary.json and index.html out, resumable. The metrics' formulas are in `localization` and
`faithfulness`; annotations (COCO, Pascal VOC, CSV) in `annotations`. docs/audit.md.
"""

from __future__ import annotations

from .annotations import AnnotationError, Annotations, load_annotations, read_class_map
from .api import audit
from .core import FAITHFULNESS, LOCALIZATION, METRICS, AuditSettings

__all__ = [
    "FAITHFULNESS",
    "LOCALIZATION",
    "METRICS",
    "AnnotationError",
    "Annotations",
    "AuditSettings",
    "audit",
    "load_annotations",
    "read_class_map",
]
