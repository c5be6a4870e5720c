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


def _coco(tmp_path, data, text: str | None = None):
    path = tmp_path / "coco.json"
    path.write_text(text if text is not None else json.dumps(data), encoding="utf-8")
    return path


ANN = {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"annotations": [ANN]}, "no 'images' list"),
        ({"images": 3, "annotations": [ANN]}, "no 'images' list"),
        ({"images": [], "categories": 4, "annotations": [ANN]}, "'categories' is not a list"),
    ],
)
def test_a_coco_file_without_usable_images_or_categories_names_the_file(tmp_path, data, message):
    path = _coco(tmp_path, data)
    with pytest.raises(AnnotationError, match=message) as caught:
        load_annotations(path)
    assert str(path) in str(caught.value)


def test_coco_with_a_bom_and_with_an_infinite_size(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": 56, "height": 40},
        {"id": 2, "file_name": "b.png", "width": 1e400, "height": 40},  # JSON's 1e400 is inf
    ]
    data = {"images": images, "annotations": [ANN, {**ANN, "id": 2, "image_id": 2}]}
    loaded = load_annotations(_coco(tmp_path, None, "\ufeff" + json.dumps(data)))
    assert [o.file for o in loaded.objects] == ["a.png"]
    assert [i.where.rsplit(" ", 1)[-1] for i in loaded.issues] == ["2"]


def _voc_object(name: str, box: str) -> str:
    return f"<object><name>{name}</name>{box}</object>"


def test_a_bad_voc_object_is_its_own_issue_and_the_files_other_objects_are_kept(tmp_path):
    folder = tmp_path / "voc"
    folder.mkdir()
    full = "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>9</xmax><ymax>8</ymax></bndbox>"
    (folder / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>0</width><height>0</height></size>"
        + _voc_object("dog", full)
        + _voc_object("cat", "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>9</xmax></bndbox>")
        + _voc_object("cow", "")
        + "</annotation>"
    )
    loaded = load_annotations(folder)
    (obj,) = loaded.objects
    assert (obj.label, obj.box, obj.size) == ("dog", (1.0, 2.0, 9.0, 8.0), None)  # size 0: unknown
    assert [(i.where, i.file) for i in loaded.issues] == [
        (f"{folder / 'a.xml'}: object 2", "a.png"),
        (f"{folder / 'a.xml'}: object 3", "a.png"),
    ]
    assert "no <ymax>" in loaded.issues[0].message and "no <bndbox>" in loaded.issues[1].message


def test_a_csv_header_after_comment_lines_is_skipped(tmp_path):
    path = tmp_path / "ann.csv"
    path.write_text("# made by hand\n\nfile,class,x0,y0,x1,y1\na.png,1,0,0,5,5\n")
    loaded = load_annotations(path)
    assert not loaded.issues and [o.where for o in loaded.objects] == [f"{path}:4"]


def _objects(*files: str) -> Annotations:
    return Annotations([ObjectAnnotation(f, "1", (0, 0, 5, 5), f"ann:{f}") for f in files], [])


def test_file_names_without_extension_and_in_another_unicode_form_match():
    nfd = unicodedata.normalize("NFD", "images/café.jpg")
    keys = ["images/ILSVRC2012_val_00000001.JPEG", nfd]
    found, issues = match_annotations(keys, _objects("ILSVRC2012_val_00000001", "café.jpg"))
    assert not issues
    assert [o.file for o in found[keys[0]]] == ["ILSVRC2012_val_00000001"]
    assert [o.file for o in found[nfd]] == ["café.jpg"]


def test_a_base_name_that_several_files_share_is_reported_as_ambiguous():
    keys = ["data/x/a.png", "data/y/a.png"]
    found, issues = match_annotations(keys, _objects("a.png", "x/a.png"), roots=["data"])
    assert list(found) == ["data/x/a.png"]
    (issue,) = issues
    assert "a.png could be any of 2 files (data/x/a.png, data/y/a.png)" in issue.message
