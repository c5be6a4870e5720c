"""Ray Data explanation: one row per file, errors for corrupt files, the single-process maps.

Runs on one local Ray (`ray.init(num_cpus=2)`) shared by the module, a folder of 22 small images
(4 of them corrupt) and a tiny VGG exported at 64 px with K = 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ray = pytest.importorskip(
    "ray", reason='Ray Data is an optional extra: pip install -e ".[cpu,dev,ray]"'
)
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow comes with the ray extra")

from PIL import Image  # noqa: E402
from tiny_models import make_tiny_vgg  # noqa: E402

from gradcam_fast import GradCAMSession, export_onnx  # noqa: E402
from gradcam_fast.cli import main  # noqa: E402
from gradcam_fast.io.images import load_image, preprocess  # noqa: E402
from gradcam_fast.services.ray_data import (  # noqa: E402
    ROW_SCHEMA,
    GradCAMPredictor,
    actor_resources,
    explain_dataset,
    read_maps,
)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
SIZE = 64
CORRUPT = {
    "random.jpg": bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
    "empty.png": b"",
    "text.jpg": b"this is not an image\n",
}


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray with 2 CPUs for the whole module (starting one takes seconds)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """18 good images (the examples at several sizes, PNG and JPEG, one in a subfolder, one
    grayscale) and 4 corrupt ones (random bytes, empty, text, a truncated JPEG)."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "sub").mkdir()
    sources = sorted(EXAMPLES.glob("*.jpg"))
    assert sources, f"no example images in {EXAMPLES}"
    n = 0
    for width in (48, 80, 120, 200):
        for src in sources:
            image = Image.open(src).convert("RGB")
            image = image.resize((width, max(8, width * image.height // image.width)))
            ext = "png" if n % 3 == 0 else "jpg"
            image.save(root / f"{src.stem}_{width}.{ext}")
            n += 1
    Image.open(sources[0]).convert("L").resize((70, 50)).save(root / "sub" / "gray.jpg")
    Image.open(sources[1]).convert("RGB").resize((90, 90)).save(root / "sub" / "cat_90.jpg")
    for name, data in CORRUPT.items():
        (root / name).write_bytes(data)
    whole = (root / "cat_200.jpg").read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    (root / "notes.txt").write_text("not an image extension: never read")
    return root


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    model = make_tiny_vgg(num_classes=10, seed=3)
    return export_onnx(model, path, image_size=SIZE, num_targets=2, validate=False)


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))


def _single_process(model_path: Path, paths: list[Path]) -> dict[str, np.ndarray]:
    """The maps of one in-process session, one image at a time."""
    session = GradCAMSession(model_path, device="cpu", intra_op_threads=1)
    meta = session.metadata
    maps = {}
    for path in paths:
        x = preprocess(load_image(path), SIZE, meta.mean, meta.std)
        maps[str(path)] = session(x[None]).cams_lowres[0].numpy()
    return maps


@pytest.mark.slow
def test_every_file_one_row_errors_and_maps_match(ray_local, folder, model_path):
    """Two actors, batches of 4, the folder as Ray lists it: one row per image file, errors for
    the corrupt ones, and for the others the maps a single in-process session gives."""
    rows = explain_dataset(str(folder), model_path, actors=2, batch_size=4).take_all()
    files = _image_files(folder)
    assert len(files) == 22
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in files)

    corrupt = {str(folder / n) for n in CORRUPT} | {str(folder / "sub" / "truncated.jpg")}
    failed = {r["path"]: r for r in rows if r["error"] is not None}
    assert set(failed) == corrupt
    for path, row in failed.items():
        assert Path(path).name in row["error"]
        assert row["cams_lowres"] is None and row["predictions"] is None

    good = [p for p in files if str(p) not in corrupt]
    expected = _single_process(model_path, good)
    for row in rows:
        if row["error"] is not None:
            continue
        shape = tuple(row["cams_lowres_shape"])
        assert shape == expected[row["path"]].shape and shape[0] == 2
        got = np.asarray(row["cams_lowres"], dtype=np.float32).reshape(shape)
        np.testing.assert_allclose(got, expected[row["path"]], rtol=1e-5, atol=1e-6)
        probs = [p["probability"] for p in row["predictions"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert row["explained"] == [p["index"] for p in row["predictions"][:2]]


@pytest.mark.slow
def test_cli_writes_parquet_and_overlays(ray_local, folder, model_path, tmp_path, capsys):
    """The subcommand on the running Ray: Parquet rows for every file, exit 1 because some
    failed, one overlay PNG per good image and class, and the maps of the library call."""
    out, overlays = tmp_path / "out", tmp_path / "overlays"
    argv = ["explain-dataset", str(folder), "--out", str(out), "--model", str(model_path)]
    argv += ["--actors", "1", "--batch-size", "8", "--overlays", str(overlays), "--class", "3"]
    argv += ["--class", "7"]
    assert main(argv) == 1
    assert "18 image(s) explained, 4 failed" in capsys.readouterr().err

    table = pq.read_table(out)
    assert table.schema.names == ROW_SCHEMA.names
    assert table.num_rows == 22
    good = [r for r in table.to_pylist() if r["error"] is None]
    assert len(good) == 18
    assert all(r["explained"] == [3, 7] for r in good)
    pngs = sorted(overlays.glob("*.png"))
    assert len(pngs) == 2 * 18
    assert sorted(f for r in good for f in r["outputs"]) == sorted(str(p) for p in pngs)
    assert Image.open(pngs[0]).size == (SIZE, SIZE)

    maps = read_maps(out)
    expected = _single_process_classes(model_path, [Path(p) for p in maps], [3, 7])
    for path, cam in maps.items():
        np.testing.assert_allclose(cam, expected[path], rtol=1e-5, atol=1e-6)


def _single_process_classes(model_path: Path, paths: list[Path], classes: list[int]):
    session = GradCAMSession(model_path, device="cpu", intra_op_threads=1)
    meta = session.metadata
    x = torch.stack([preprocess(load_image(p), SIZE, meta.mean, meta.std) for p in paths])
    lowres = session(x, torch.tensor([classes] * len(paths))).cams_lowres.numpy()
    return {str(p): m for p, m in zip(paths, lowres, strict=True)}


def test_predictor_reads_the_model_shipped_through_the_object_store(ray_local, model_path):
    """On a node without the driver's file, an actor takes the model from the object store."""
    good = (EXAMPLES / "cat.jpg").read_bytes()
    shipped = [ray.put(model_path.read_bytes())]
    predictor = GradCAMPredictor("/nonexistent/node/tiny.onnx", shipped=shipped)
    assert predictor.session.path != Path("/nonexistent/node/tiny.onnx")
    batch = {"path": np.array(["a.jpg", "b.jpg"]), "bytes": np.array([good, b"x"], dtype=object)}
    table = predictor(batch)
    assert table.schema == ROW_SCHEMA
    assert table.column("path").to_pylist() == ["a.jpg", "b.jpg"]
    error = table.column("error").to_pylist()
    assert error[0] is None and "b.jpg" in error[1]
    expected = _single_process(model_path, [EXAMPLES / "cat.jpg"])[str(EXAMPLES / "cat.jpg")]
    got = np.asarray(table.column("cams_lowres")[0].as_py(), np.float32).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_actor_resources_split_the_cluster(ray_local):
    """Default: the 2 CPUs split between the actors; threads follow the reservation."""
    assert (actor_resources(1).num_cpus, actor_resources(1).threads) == (2.0, 2)
    assert (actor_resources(2).num_cpus, actor_resources(2).threads) == (1.0, 1)
    assert actor_resources(4).num_cpus == 1.0  # never below one CPU
    assert actor_resources(2, cpus_per_actor=0.5).threads == 1
    with pytest.raises(RuntimeError, match="GPU"):
        actor_resources(1, gpus_per_actor=1)
    with pytest.raises(ValueError, match="at least 1"):
        actor_resources(0)


def test_cli_without_ray_says_how_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    argv = ["explain-dataset", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    assert 'pip install "gradcam_fast[ray]"' in capsys.readouterr().err


def test_cli_refuses_a_nonempty_destination(folder, model_path, tmp_path, capsys):
    (tmp_path / "old.parquet").write_bytes(b"x")
    argv = ["explain-dataset", str(folder), "--out", str(tmp_path), "--model", str(model_path)]
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err


def test_cli_tensorrt_needs_gpu_actors(folder, model_path, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["explain-dataset", str(folder), "--out", str(out), "--model", str(model_path)]
    assert main([*argv, "--tensorrt"]) == 2
    assert "--tensorrt runs on GPU actors: add --num-gpus-per-actor" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- documented options


@pytest.mark.slow
def test_cli_without_model_top_k_exports_into_the_cache(
    ray_local, folder, tmp_path, monkeypatch, capsys
):
    """`explain-dataset` without --model exports the channel-weights model with K = --top-k into
    the cache (a tiny VGG stands in for vgg11: the exporter's loader is patched) and explains
    each image's two most likely classes with it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADCAM_FAST_CACHE", str(cache))
    monkeypatch.setattr(
        "gradcam_fast.export.onnx_export.load_model",
        lambda arch, weights, seed=0: make_tiny_vgg(seed=3),
    )
    out = tmp_path / "out"
    argv = ["explain-dataset", str(folder), "--out", str(out), "--arch", "vgg11", "--weights"]
    argv += ["random", "--image-size", str(SIZE), "--top-k", "2", "--batch-size", "8", "-q"]
    assert main(argv) == 1, capsys.readouterr().err  # the 4 corrupt files
    [model] = cache.glob("*.onnx")
    assert model.name == f"vgg11-random0-default-{SIZE}-k2-cw.onnx"
    good = [r for r in pq.read_table(out).to_pylist() if r["error"] is None]
    assert len(good) == 18
    for row in good:
        assert row["explained"] == [p["index"] for p in row["predictions"][:2]]
    maps = read_maps(out)
    expected = _single_process(model, [Path(p) for p in maps])
    for path, cam in maps.items():
        assert cam.shape[0] == 2
        np.testing.assert_allclose(cam, expected[path], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_cli_raw_pixel_model_and_same_file_names(ray_local, tmp_path, capsys):
    """A raw-pixel model through `explain-dataset`: the maps of the float model fed normalized
    tensors; two files of the same name in different folders get distinct overlays."""
    tiny = make_tiny_vgg(num_classes=10, seed=3)
    raw = export_onnx(tiny, tmp_path / "raw.onnx", image_size=SIZE, raw_pixels=True)
    plain = export_onnx(tiny, tmp_path / "float.onnx", image_size=SIZE)
    source = tmp_path / "source"
    for folder, image in (("a", "cat.jpg"), ("b", "coffee.jpg")):
        (source / folder).mkdir(parents=True)
        Image.open(EXAMPLES / image).convert("RGB").resize((90, 70)).save(
            source / folder / "photo.jpg"
        )
    out, overlays = tmp_path / "out", tmp_path / "overlays"
    argv = ["explain-dataset", str(source), "--out", str(out), "--model", str(raw), "--overlays"]
    assert main([*argv, str(overlays), "-q"]) == 0, capsys.readouterr().err
    rows = pq.read_table(out).to_pylist()
    assert sorted(Path(r["path"]).parent.name for r in rows) == ["a", "b"]
    outputs = [f for r in rows for f in r["outputs"]]
    assert len(outputs) == 2 and sorted(outputs) == sorted(str(p) for p in overlays.iterdir())
    maps = read_maps(out)
    expected = _single_process(plain, [Path(p) for p in maps])
    for path, cam in maps.items():
        np.testing.assert_allclose(cam, expected[path], rtol=1e-5, atol=1e-5)
