"""Malformed and unusual annotations, without a model: each bad object is an issue naming its
place and the others are kept; a file that cannot be used at all is an AnnotationError naming
it; annotation file names match the images however they are spelled (no extension, NFD)."""

from __future__ import annotations

import json
import unicodedata

import pytest

from gradcam_fast.audit.annotations import (
    AnnotationError,
    Annotations,
    ObjectAnnotation,
    load_annotations,
)
from gradcam_fast.audit.api import match_annotations
from gradcam_fast.audit.masks import decode_rle
from gradcam_fast.audit.regions import class_regions


def _rle(counts, where: str) -> ObjectAnnotation:
    rle = {"size": [4, 5], "counts": counts}
    return ObjectAnnotation("a.png", "1", None, where, rle=rle, cls=1)


def test_a_malformed_compressed_rle_is_an_issue_not_a_crash():
    with pytest.raises(ValueError, match="truncated"):
        decode_rle({"size": [4, 5], "counts": "P"})  # a continuation bit, then nothing
    with pytest.raises(ValueError, match="not one of"):
        decode_rle({"size": [4, 5], "counts": "~~"})
    good = _rle([5, 10, 5], "good")
    no_counts = ObjectAnnotation("a.png", "1", None, "no counts", rle={"size": [4, 5]}, cls=1)
    objects = [_rle("P", "truncated"), no_counts, good]
    objects.append(ObjectAnnotation("a.png", "1", None, "inf", polygons=((1e400,) * 6,), cls=1))
    regions, issues = class_regions(objects, 5, 4)
    assert [i.where for i in issues] == ["truncated", "no counts", "inf"]
    assert "truncated" in issues[0].message and "no 'counts' in its" in issues[1].message
    assert regions[1].where == ["good"] and int(regions[1].mask.sum()) == 10


def test_an_rle_for_another_size_is_refused_before_it_is_decoded():
    huge = ObjectAnnotation(
        "a.png", "1", None, "huge", rle={"size": [10**6, 10**6], "counts": [10**12]}, cls=1
    )
    regions, issues = class_regions([huge], 5, 4)
    assert not regions and "its RLE is 1000000x1000000, the image is 5x4" in issues[0].message
