"""`gradcam-fast audit` end to end on a tiny model: the outputs, bad input of every kind
(reported in images.jsonl and on stderr with the file and line or id, the rest audited, exit
status 1), fatal annotation errors (exit 2), resuming, the three annotation formats, and Ray
(the same rows as the single-process run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_models import make_tiny_vgg

from gradcam_fast import export_onnx
from gradcam_fast.audit import load_annotations
from gradcam_fast.audit.run import read_lines
from gradcam_fast.cli import EXIT_ERROR, EXIT_OK, EXIT_SOME_FAILED, main

SIZE = 32
CSV = """file,class,x0,y0,x1,y1
a.png,1,10,8,40,30
b.png,2,5,5,30,20
b.png,3,20,10,45,35
c.png,4,12,12,9,30
d.png,5,100,100,140,140
missing.png,1,0,0,5,5
a.png,zebra,0,0,5,5
a.png,1,2
broken.png,1,0,0,10,10
e.png,6,-10,-5,20,20
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.onnx"
    return export_onnx(make_tiny_vgg(seed=1), path, image_size=SIZE, validate=False)


@pytest.fixture
def data(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, name in enumerate("abcde"):
        pixels = rng.integers(0, 255, (40 + 4 * i, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ann = tmp_path / "ann.csv"
    ann.write_text(CSV)
    return folder, ann


def _run(folder, ann, out, model, *extra):
    argv = ["audit", str(folder), "--out", str(out), "--model", str(model), "--steps", "4", "-q"]
    return main([*argv, *(["--annotations", str(ann)] if ann else []), *extra])


def test_bad_input_is_reported_and_the_rest_audited(data, model, tmp_path, capsys):
    folder, ann = data
    out = tmp_path / "out"
    assert _run(folder, ann, out, model) == EXIT_SOME_FAILED
    err = capsys.readouterr().err
    rows = read_lines(out / "images.jsonl")
    errors = {r["where"]: r["error"] for r in rows if "error" in r and "where" in r}
    expected = {
        5: "empty or inverted box",
        6: "lies outside the 56x52 image",
        7: "no such image file: missing.png",
        8: "class 'zebra' is not one of the model's",
        9: "expected 6 fields",
    }
    for line, text in expected.items():
        where = f"{ann}:{line}"
        assert text in errors[where], (where, errors)
        assert any(where in line and text in line for line in err.splitlines()), where
    assert any("broken.png" in (r["path"] or "") and "error" in r for r in rows)  # a corrupt image
    audited = {(r["path"].rsplit("/", 1)[-1], r["class"]) for r in rows if "error" not in r}
    assert audited == {("a.png", 1), ("b.png", 2), ("b.png", 3), ("e.png", 6)}
    clipped = next(r for r in rows if r.get("class") == 6)
    assert clipped["clipped_boxes"] == 1 and clipped["where"] == [f"{ann}:11"]
    for r in rows:
        if "error" not in r:
            for key in (
                "pointing",
                "energy",
                "localization",
                "deletion",
                "insertion",
                "drop",
                "road",
            ):
                assert key in r, (key, r)
            assert len(r["deletion_curve"]) == 5 and r["deletion_curve"][0] == r["probability"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 4 and summary["errors"] == len(rows) - 4
    assert 0.0 <= summary["overall"]["energy"]["low"] <= summary["overall"]["energy"]["high"] <= 1.0
    page = (out / "index.html").read_text()
    assert "Classes, worst first" in page and "<svg" in page and "worst/" in page
    assert len(list((out / "worst").glob("*.png"))) == 4
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]  # nothing half-written


def test_a_rerun_resumes_and_redoes_only_what_is_missing(data, model, tmp_path):
    folder, ann = data
    out = tmp_path / "out"
    _run(folder, ann, out, model)
    first = read_lines(out / "images.jsonl")
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    assert _run(folder, ann, out, model) == EXIT_SOME_FAILED  # nothing new, same errors
    assert sorted(map(key, read_lines(out / "images.jsonl"))) == sorted(map(key, first))
    # a crash after two audited rows, in the middle of the third line
    text = (out / "images.jsonl").read_text().splitlines(keepends=True)
    audited = [i for i, line in enumerate(text) if '"class"' in line]
    cut = [*text[: audited[1] + 1], text[audited[2]][:20]]
    (out / "images.jsonl").write_text("".join(cut))
    _run(folder, ann, out, model)
    again = read_lines(out / "images.jsonl")
    assert sorted(map(key, again)) == sorted(map(key, first))  # same rows, none twice


def test_other_settings_into_the_same_folder_are_refused(data, model, tmp_path, capsys):
    folder, ann = data
    out = tmp_path / "out"
    _run(folder, ann, out, model)
    assert _run(folder, ann, out, model, "--baseline", "constant") == EXIT_ERROR
    assert "other settings (baseline differ)" in capsys.readouterr().err


def test_without_annotations_only_faithfulness(data, model, tmp_path):
    folder, _ = data
    (folder / "broken.png").unlink()
    out = tmp_path / "out"
    assert _run(folder, None, out, model, "--metrics", "deletion,insertion,drop") == EXIT_OK
    rows = read_lines(out / "images.jsonl")
    assert len(rows) == 5 and all(r["class"] == r["predicted"] for r in rows)
    assert all("pointing" not in r and "road" not in r and "drop" in r for r in rows)
    assert _run(folder, None, tmp_path / "o2", model, "--metrics", "pointing") == EXIT_ERROR


def test_a_corrupt_annotation_file_is_an_error_naming_the_place(data, model, tmp_path, capsys):
    folder, _ = data
    bad = tmp_path / "coco.json"
    bad.write_text('{"images": [],\n "annotations": [ {"id": 1,, } ]}')
    assert _run(folder, bad, tmp_path / "out", model) == EXIT_ERROR
    assert f"{bad}:2:" in capsys.readouterr().err
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("a.png,zebra,0,0,5,5\nb.png,okapi,0,0,5,5\n")
    assert _run(folder, unknown, tmp_path / "out2", model) == EXIT_ERROR
    err = capsys.readouterr().err
    assert "no annotation class matches" in err and "'zebra' (1)" in err and "'okapi' (1)" in err


def test_coco_boxes_polygons_and_rle_and_a_class_map(data, model, tmp_path):
    folder, _ = data
    coco = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 56, "height": 40},
            {"id": 2, "file_name": "b.png", "width": 99, "height": 44},
        ],
        "categories": [{"id": 7, "name": "n0007"}, {"id": 8, "name": "n0008"}],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 7,
                "bbox": [10, 8, 20, 12],
                "segmentation": [[10, 8, 30, 8, 30, 20, 10, 20]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 8,
                "segmentation": {"size": [40, 56], "counts": [56 * 10, 40, 56 * 40 - 56 * 10 - 40]},
            },
            {"id": 12, "image_id": 2, "category_id": 7, "bbox": [0, 0, 5, 5]},
            {"id": 13, "image_id": 9, "category_id": 7, "bbox": [0, 0, 5, 5]},
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    loaded = load_annotations(path)
    assert [o.label for o in loaded.objects] == ["n0007", "n0008", "n0007"]
    assert loaded.objects[0].box == (10.0, 8.0, 30.0, 20.0) and loaded.objects[1].rle is not None
    assert "annotation id 13" in str(loaded.issues[0]) and "image_id 9" in str(loaded.issues[0])
    class_map = tmp_path / "synsets.txt"
    class_map.write_text("n0000 zero\nn0007 seven, the class\nn0008 eight\n")
    out = tmp_path / "out"
    assert _run(folder, path, out, model, "--class-map", str(class_map)) == EXIT_SOME_FAILED
    rows = read_lines(out / "images.jsonl")
    good = sorted((r["class"], r["where"][0].rsplit(" ", 1)[-1]) for r in rows if "error" not in r)
    assert good == [(1, "10"), (2, "11")]  # labels mapped by line: n0007 -> 1, n0008 -> 2
    errors = " ".join(r["error"] for r in rows if "error" in r)
    assert "annotated for a 99x44 image, the file is 56x44" in errors and "id 13" in errors


def test_voc_folder(tmp_path):
    xml = tmp_path / "voc"
    xml.mkdir()
    (xml / "a.xml").write_text(
        "<annotation><filename>a.png</filename><size><width>56</width><height>40</height></size>"
        "<object><name>dog</name><bndbox><xmin>11</xmin><ymin>9</ymin><xmax>30</xmax>"
        "<ymax>20</ymax></bndbox></object></annotation>"
    )
    (xml / "bad.xml").write_text("<annotation><filename>")
    loaded = load_annotations(xml)
    (obj,) = loaded.objects
    assert (obj.file, obj.label, obj.box, obj.size) == (
        "a.png",
        "dog",
        (10.0, 8.0, 30.0, 20.0),
        (56, 40),
    )
    assert "bad.xml" in loaded.issues[0].where


@pytest.mark.slow
def test_ray_gives_the_rows_of_the_single_process_run(data, model, tmp_path):
    pytest.importorskip("ray.data")
    import ray

    folder, ann = data
    _run(folder, ann, tmp_path / "local", model)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        _run(folder, ann, tmp_path / "ray", model, "--ray", "--actors", "2")
    finally:
        ray.shutdown()
    local, distributed = (read_lines(tmp_path / d / "images.jsonl") for d in ("local", "ray"))
    key = lambda r: (r.get("path") or "", r.get("class", -1), r.get("where", ""))  # noqa: E731
    local, distributed = sorted(local, key=key), sorted(distributed, key=key)
    assert [key(r) for r in local] == [key(r) for r in distributed]
    for a, b in zip(local, distributed, strict=True):
        for name, value in a.items():
            if isinstance(value, float):
                assert np.isclose(value, b[name], atol=1e-4, rtol=0), (name, a, b)
            elif not isinstance(value, list) or not value or not isinstance(value[0], float):
                assert value == b[name], (name, a, b)


def test_a_malformed_rle_fails_its_object_and_the_rest_is_audited(data, model, tmp_path, capsys):
    folder, _ = data
    bad_rle = {"size": [40, 56], "counts": "P"}  # ends inside a count
    coco = {
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": bad_rle},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 15]},
        ],
    }
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    out = tmp_path / "out"
    assert _run(folder, path, out, model, "--metrics", "energy") == EXIT_SOME_FAILED
    assert f"{path}: annotation id 1: compressed RLE" in capsys.readouterr().err
    rows = read_lines(out / "images.jsonl")
    (good,) = [r for r in rows if "error" not in r]
    assert good["path"].endswith("b.png") and 0.0 <= good["energy"] <= 1.0
    assert [r["where"] for r in rows if "error" in r] == [f"{path}: annotation id 1"]


def test_a_folder_with_another_commands_images_jsonl_is_refused(data, model, tmp_path, capsys):
    folder, ann = data
    out = tmp_path / "out"
    out.mkdir()
    foreign = json.dumps({"path": str(folder / "a.png"), "class": 1, "image_rows": 1}) + "\n"
    (out / "images.jsonl").write_text(foreign)
    assert _run(folder, ann, out, model) == EXIT_ERROR
    assert "without the settings.json of an audit" in capsys.readouterr().err
    assert (out / "images.jsonl").read_text() == foreign  # left as it was


def test_temporary_files_of_a_killed_run_are_removed_by_the_rerun(data, model, tmp_path):
    folder, ann = data
    out = tmp_path / "out"
    _run(folder, ann, out, model, "--metrics", "energy")
    # what SIGKILL leaves while io.files.atomic_file writes: a .part file beside its target
    stale = [out / ".images.jsonl.x1.part", out / ".summary.json.x2.part"]
    stale.append(out / "worst" / ".a-0_1.png.x3.part")
    mine = out / ".notes.part"  # not one of the audit's: left alone
    for p in [*stale, mine]:
        p.write_text("half")
    _run(folder, ann, out, model, "--metrics", "energy")
    assert not [p for p in stale if p.exists()] and mine.exists()


def test_a_rerun_follows_the_annotations_and_retries_failed_images(data, model, tmp_path, capsys):
    """Fixed annotations: the images whose objects changed are audited again and the annotation
    file's old errors go; an image that failed is tried again; an image given by another spelling
    of its path is not audited twice."""
    folder, ann = data
    out = tmp_path / "out"
    _run(folder, ann, out, model)
    first = read_lines(out / "images.jsonl")
    a_rows = [r for r in first if str(r.get("path")).endswith("a.png") and "class" in r]
    assert a_rows and all(r["annotation_digest"] for r in a_rows)
    # fix: a.png's box moved, the zebra and short lines gone, broken.png now a real picture
    fixed = CSV.replace("a.png,1,10,8,40,30", "a.png,1,0,0,20,20")
    fixed = fixed.replace("a.png,zebra,0,0,5,5\n", "").replace("a.png,1,2\n", "")
    ann.write_text(fixed)
    Image.fromarray(np.full((40, 56, 3), 90, np.uint8)).save(folder / "broken.png", format="PNG")
    capsys.readouterr()
    _run(folder.resolve(), ann, out, model)  # the folder now given by its absolute path
    err = capsys.readouterr().err
    rows = read_lines(out / "images.jsonl")
    errors = " ".join(r["error"] for r in rows if "error" in r)
    assert "zebra" not in errors and "got 3" not in errors and "zebra" not in err
    assert "missing.png" in errors and "missing.png" in err  # still there: said again
    (a_row,) = [r for r in rows if str(r.get("path")).endswith("a.png") and "class" in r]
    assert a_row["annotation_digest"] != a_rows[0]["annotation_digest"]
    assert a_row["energy"] != a_rows[0]["energy"]  # scored against the new box
    broken = [r for r in rows if str(r.get("path")).endswith("broken.png")]
    assert broken and all("error" not in r for r in broken), broken
    audited = [(Path(r["path"]).resolve(), r["class"]) for r in rows if "energy" in r]
    assert len(audited) == len(set(audited)) == 5  # a, b (two classes), e, broken: once each


def test_a_class_map_with_a_blank_line_or_more_labels_than_classes_is_refused(tmp_path):
    """Line i labels class i - 1: a blank line inside would shift every later class silently."""
    from gradcam_fast.audit import AnnotationError, Annotations, read_class_map
    from gradcam_fast.audit.annotations import resolve_labels

    holed = tmp_path / "holed.txt"
    holed.write_text("n0 zero\n\nn2 two\n")
    with pytest.raises(AnnotationError, match=r"holed.txt:2: a blank line"):
        read_class_map(holed)
    trailing = tmp_path / "trailing.txt"
    trailing.write_text("\ufeffn0 zero\nn1 one\n\n\n")  # a BOM and blank lines at the end: fine
    assert read_class_map(trailing) == ["n0", "n1"]
    with pytest.raises(AnnotationError, match="3 labels, the model only 2 classes"):
        resolve_labels(Annotations([], []), ["a", "b"], 2, ["x", "y", "z"])
