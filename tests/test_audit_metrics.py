"""The audit's metrics against hand-computed values on constructed maps, and against the
independent implementations where they install: Quantus (pointing game, relevance mass),
TorchCAM (deletion/insertion, average drop/increase), pytorch-grad-cam (ROAD), pycocotools
(masks). Every comparison fails on NaN (numpy's allclose/isclose with equal_nan=False)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from tiny_models import make_tiny_vgg

from gradcam_fast import GradCAMSession, export_onnx
from gradcam_fast.audit.core import session_scorer
from gradcam_fast.audit.faithfulness import (
    auc,
    baseline_images,
    confidence_change,
    deletion_insertion,
    road,
)
from gradcam_fast.audit.imputation import _dissection_rank, impute
from gradcam_fast.audit.localization import (
    box_iou,
    box_localization,
    energy,
    largest_segment_box,
    pointing_game,
)
from gradcam_fast.audit.masks import box_mask, decode_rle, mask_box, polygon_mask
from gradcam_fast.audit.summary import bootstrap_mean, summarize

SIZE = 32
BOX = (40.0, 30.0, 90.0, 70.0)  # x0, y0, x1, y1 in a 160 x 120 image


def _inside(h=120, w=160, box=BOX):
    return box_mask(box, h, w).astype(np.float32)


# localization, hand-computed ----------------------------------------------------------------


def test_a_map_one_inside_the_box_scores_one_and_its_reverse_zero():
    inside = _inside()
    mask = inside.astype(bool)
    assert pointing_game(inside, mask) == 1.0
    assert energy(inside, mask) == 1.0
    iou, found = box_localization(inside, [BOX])
    assert found == BOX and iou == 1.0
    outside = 1.0 - inside
    assert pointing_game(outside, mask, tolerance=0) == 0.0
    assert pointing_game(outside, mask) == 0.0  # its first maximum (0, 0) is far from the box
    assert energy(outside, mask) == 0.0
    iou, found = box_localization(outside, [BOX])
    assert found == (0.0, 0.0, 160.0, 120.0) and iou == pytest.approx(50 * 40 / (160 * 120))


def test_box_mask_takes_the_pixels_whose_centers_are_inside():
    m = box_mask((1.6, 0.4, 3.6, 2.0), 4, 5)
    assert m.sum() == 2 * 2 and m[0:2, 2:4].all()  # columns 2,3 (centers 2.5, 3.5), rows 0,1
    assert mask_box(box_mask((2, 1, 4, 3), 5, 5)) == (2.0, 1.0, 4.0, 3.0)
    assert mask_box(np.zeros((3, 3), bool)) is None


def test_pointing_tolerance_is_euclidean_pixels_to_the_object():
    mask = box_mask((50, 50, 60, 60), 100, 100)
    cam = np.zeros((100, 100), np.float32)
    cam[30, 55] = 1.0  # 20 px above the box's top row (row 50)
    assert pointing_game(cam, mask, tolerance=15) == 0.0
    assert pointing_game(cam, mask, tolerance=20) == 1.0
    cam[:] = 0
    cam[40, 40] = 1.0  # diagonal: distance to (50, 50) is 14.14
    assert pointing_game(cam, mask, tolerance=14) == 0.0
    assert pointing_game(cam, mask, tolerance=15) == 1.0


def test_energy_is_the_share_of_mass_inside_and_undefined_without_mass():
    cam = np.zeros((10, 10), np.float32)
    cam[0, 0], cam[5, 5] = 3.0, 1.0
    mask = box_mask((4, 4, 7, 7), 10, 10)
    assert energy(cam, mask) == pytest.approx(0.25)
    zero = np.zeros((10, 10), np.float32)
    assert energy(zero, mask) is None and pointing_game(zero, mask) is None
    nan = np.full((10, 10), np.nan, np.float32)
    assert box_localization(nan, [(4, 4, 7, 7)]) == (None, None)


def test_largest_segment_takes_the_biggest_eight_connected_blob():
    region = np.zeros((20, 30), bool)
    region[2:5, 2:5] = True  # 9 pixels
    region[10:14, 20:25] = True  # 20 pixels
    region[14, 25] = True  # touches the blob diagonally: 8-connected
    assert largest_segment_box(region) == (20.0, 10.0, 26.0, 15.0)
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)


def test_pointing_default_tolerance_is_a_15_pixel_disc_on_every_side():
    """The paper's 15 px (the default) around a one-pixel object at (50, 50), Euclidean: a peak
    exactly 15 px away in each of the four directions or at (dy, dx) = (9, 12) (9^2 + 12^2 =
    15^2) is a hit; 16 px away, at (10, 12) (15.6 px) or at (11, 11) (15.56 px, inside the
    15 px square but outside the disc) a miss."""
    mask = np.zeros((101, 101), bool)
    mask[50, 50] = True
    for dy, dx, hit in [
        (-15, 0, 1.0),
        (15, 0, 1.0),
        (0, -15, 1.0),
        (0, 15, 1.0),
        (-9, 12, 1.0),
        (12, -9, 1.0),
        (-16, 0, 0.0),
        (16, 0, 0.0),
        (0, -16, 0.0),
        (0, 16, 0.0),
        (10, 12, 0.0),
        (-11, -11, 0.0),
        (11, 11, 0.0),
    ]:
        cam = np.zeros((101, 101), np.float32)
        cam[50 + dy, 50 + dx] = 1.0
        assert pointing_game(cam, mask) == hit, (dy, dx)


def test_box_localization_thresholds_at_15_percent_of_the_peak():
    """Nested plateaus of a map whose peak is 4 (not 1): 0.4 (10% of the peak), 0.8 (20%) and
    the peak. The default threshold, 0.15 x 4 = 0.6, keeps the 0.8 plateau and the peak, so the
    map's box is the 0.8 plateau's: columns 20..79, rows 30..69."""
    cam = np.zeros((100, 100), np.float32)
    cam[20:80, 10:90] = 0.4
    cam[30:70, 20:80] = 0.8
    cam[40:60, 40:60] = 4.0
    iou, found = box_localization(cam, [(20.0, 30.0, 80.0, 70.0)])
    assert found == (20.0, 30.0, 80.0, 70.0) and iou == 1.0
    # threshold 0.5 x 4 = 2: the peak's plateau alone
    assert box_localization(cam, [(40.0, 40.0, 60.0, 60.0)], threshold=0.5) == (
        1.0,
        (40.0, 40.0, 60.0, 60.0),
    )


def test_box_localization_takes_the_best_of_the_class_boxes():
    """Two instances of the class: a hit when the map's box matches either (the ILSVRC
    protocol takes the best match), whichever comes first."""
    cam = _inside()  # the map's box is BOX exactly
    elsewhere = (100.0, 80.0, 150.0, 120.0)  # disjoint from BOX: IoU 0
    assert box_localization(cam, [elsewhere, BOX]) == (1.0, BOX)
    assert box_localization(cam, [BOX, elsewhere]) == (1.0, BOX)
    assert box_localization(cam, [elsewhere]) == (0.0, BOX)


def test_box_iou_of_boxes_apart_or_touching_is_zero():
    # apart on both axes: the overlaps in x and y are both negative, their product is not
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert box_iou((2, 2, 3, 3), (0, 0, 1, 1)) == 0.0
    assert box_iou((0, 0, 2, 2), (2, 0, 4, 2)) == 0.0  # sharing an edge only
    assert box_iou((0, 0, 4, 2), (1, 0, 3, 2)) == pytest.approx(0.5)  # inter 4, union 8


# masks against pycocotools ------------------------------------------------------------------


def test_rle_and_polygons_match_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(0)
    for h, w in [(7, 11), (40, 33)]:
        m = rng.random((h, w)) > 0.6
        m[: h // 2, : w // 3] = True  # long runs too
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        assert np.array_equal(decode_rle(rle), m)
        text = {"size": rle["size"], "counts": rle["counts"].decode()}
        assert np.array_equal(decode_rle(text), m)
    poly = [[10.0, 5.0, 30.0, 8.0, 25.0, 30.0, 8.0, 20.0]]
    ours = polygon_mask(poly, 40, 40)
    theirs = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(poly, 40, 40))).astype(bool)
    # the two rasterizers differ only on the outline: within a few percent of the area
    assert abs(int(ours.sum()) - int(theirs.sum())) <= 0.1 * theirs.sum()
    assert (ours & theirs).sum() >= 0.85 * theirs.sum()


def test_uncompressed_rle_is_column_major():
    m = decode_rle({"size": [2, 3], "counts": [1, 2, 3]})
    assert m.tolist() == [[False, True, False], [True, False, False]]
    with pytest.raises(ValueError, match="not 2x3"):
        decode_rle({"size": [2, 3], "counts": [1, 2]})


# localization against Quantus ---------------------------------------------------------------


def test_pointing_game_and_energy_match_quantus():
    quantus = pytest.importorskip("quantus")
    rng = np.random.default_rng(1)
    a = rng.random((12, 1, 24, 36)).astype(np.float32) ** 3
    s = np.zeros((12, 1, 24, 36), np.float32)
    for i in range(12):
        y0, x0 = rng.integers(0, 14), rng.integers(0, 24)
        s[i, 0, y0 : y0 + 8, x0 : x0 + 10] = 1
    x = rng.random((12, 3, 24, 36)).astype(np.float32)
    kw = {"model": None, "x_batch": x, "y_batch": np.zeros(12, int), "a_batch": a, "s_batch": s}
    pg = quantus.PointingGame(disable_warnings=True)(**kw)
    rma = quantus.RelevanceMassAccuracy(disable_warnings=True)(**kw)
    ours_pg = [pointing_game(a[i, 0], s[i, 0] > 0, tolerance=0) for i in range(12)]
    ours_e = [energy(a[i, 0], s[i, 0] > 0) for i in range(12)]
    assert 0 < sum(ours_pg) < 12  # both outcomes occur
    assert ours_pg == [float(v) for v in pg]
    assert np.allclose(ours_e, np.asarray(rma, dtype=np.float64), atol=1e-6)


# faithfulness, hand-computed ----------------------------------------------------------------


def _mean_scorer(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """A model whose 'probability' is the mean pixel value: deletion removes it linearly."""
    return x.mean(dim=(1, 2, 3))


def test_deletion_and_insertion_of_a_linear_score_have_auc_one_half():
    x = torch.ones(2, 3, 8, 8)
    cams = torch.rand(2, 8, 8, generator=torch.Generator().manual_seed(0))
    p0 = torch.ones(2)
    fractions, dele, ins = deletion_insertion(
        _mean_scorer, x, cams, torch.zeros(2, dtype=torch.long), p0, steps=4, baseline="constant"
    )
    assert fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert torch.allclose(dele, 1 - fractions.expand(2, -1))
    assert torch.allclose(ins, fractions.expand(2, -1))
    assert torch.allclose(auc(dele, fractions), torch.tensor([0.5, 0.5]))


def test_deletion_removes_the_pixels_the_map_ranks_first():
    x = torch.zeros(1, 3, 4, 4)
    x[0, :, 0, :2] = 1.0  # the 'object': 2 of 16 pixels
    cams = torch.zeros(1, 4, 4)
    cams[0, 0, :2] = 1.0  # a map on the object

    def score(img, classes):
        return img[:, 0, 0, :2].mean(dim=1)  # the model only looks at the object

    fractions, dele, _ = deletion_insertion(
        score,
        x,
        cams,
        torch.zeros(1, dtype=torch.long),
        torch.ones(1),
        steps=8,
        baseline="constant",
    )
    assert dele[0].tolist() == [1.0] + [0.0] * 8  # gone at the first step
    # the reverse map deletes the object last: a much worse (higher) deletion AUC
    _, dele_rev, _ = deletion_insertion(
        score,
        x,
        1 - cams,
        torch.zeros(1, dtype=torch.long),
        torch.ones(1),
        steps=8,
        baseline="constant",
    )
    assert auc(dele_rev, fractions).item() > auc(dele, fractions).item() + 0.5


def test_deletion_steps_by_ceil_n_over_s_and_starts_from_the_given_p0():
    """9 pixels in S = 4 steps: n_t = t x ceil(9 / 4) = 0, 3, 6, then all 9 (the module's
    definition, TorchCAM's points), so 4 points, not 5. The unperturbed image's probability is
    the given p0 (never recomputed): deletion's first point and insertion's last."""
    x = torch.ones(2, 3, 3, 3)
    cams = torch.rand(2, 3, 3, generator=torch.Generator().manual_seed(5))
    p0 = torch.tensor([0.3, 0.7])  # not the scorer's 1.0 on x
    fractions, dele, ins = deletion_insertion(
        _mean_scorer, x, cams, torch.zeros(2, dtype=torch.long), p0, steps=4, baseline="constant"
    )
    torch.testing.assert_close(fractions, torch.tensor([0.0, 1 / 3, 2 / 3, 1.0]))
    torch.testing.assert_close(dele[:, 0], p0)
    torch.testing.assert_close(ins[:, -1], p0)
    torch.testing.assert_close(dele[:, 1:], (1 - fractions[1:]).expand(2, -1))
    torch.testing.assert_close(ins[:, :-1], fractions[:-1].expand(2, -1))


def test_confidence_change_formula():
    x = torch.ones(3, 3, 4, 4)
    cams = torch.stack([torch.full((4, 4), v) for v in (0.5, 1.0, 0.25)])
    p0 = torch.tensor([0.8, 0.5, 0.2])
    drop, inc = confidence_change(_mean_scorer, x, cams, torch.zeros(3, dtype=torch.long), p0)
    # p(E) = mean(x * m) = 0.5, 1.0, 0.25
    assert np.allclose(drop.numpy(), [(0.8 - 0.5) / 0.8, 0.0, 0.0])
    assert inc.tolist() == [0.0, 1.0, 1.0]


def test_blur_baseline_is_rises_gaussian_reflected_at_the_border():
    """kernel 11, sigma 5, normalized, separable: an impulse far from the border spreads as
    g(dy) g(dx) with g(t) = exp(-t^2 / 50) / sum_t exp(-t^2 / 50) (t = -5..5); a constant image
    stays constant up to the border (reflection, no zeros padded in, weights summing to 1)."""
    t = torch.arange(-5, 6, dtype=torch.float64)
    g = torch.exp(-(t**2) / (2 * 5.0**2))
    g = g / g.sum()
    impulse = torch.zeros(1, 3, 31, 31)
    impulse[0, :, 15, 15] = 1.0
    blurred = baseline_images(impulse, "blur")
    want = torch.zeros(31, 31, dtype=torch.float64)
    want[10:21, 10:21] = g[:, None] * g[None, :]
    for c in range(3):
        torch.testing.assert_close(blurred[0, c].double(), want, rtol=0, atol=1e-7)
    flat = torch.full((2, 3, 20, 17), 0.7)
    torch.testing.assert_close(baseline_images(flat, "blur"), flat, rtol=0, atol=1e-6)
    torch.testing.assert_close(baseline_images(flat, "constant"), torch.zeros_like(flat))


def test_blur_baseline_matches_torchvision_gaussian_blur():
    """torchvision's gaussian_blur (kernel 11, sigma 5, reflect padding) is an independent
    implementation of the same filter."""
    tf = pytest.importorskip("torchvision.transforms.functional")
    x = torch.rand(2, 3, 24, 19, generator=torch.Generator().manual_seed(3))
    want = tf.gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])
    torch.testing.assert_close(baseline_images(x, "blur"), want, rtol=0, atol=1e-5)


def test_deletion_auc_is_the_trapezoid_rule():
    """Curve [1, 0, ..., 0] at fractions 0, 1/8, ..., 1: one trapezoid, (1 + 0) / 2 x 1/8."""
    fractions = torch.linspace(0, 1, 9)
    curve = torch.tensor([[1.0] + [0.0] * 8, [0.0] * 8 + [1.0]])
    torch.testing.assert_close(auc(curve, fractions), torch.tensor([1 / 16, 1 / 16]))
    uneven = torch.tensor([0.0, 0.1, 1.0])  # widths 0.1 and 0.9
    torch.testing.assert_close(
        auc(torch.tensor([[2.0, 4.0, 0.0]]), uneven), torch.tensor([0.1 * 3 + 0.9 * 2])
    )


def test_a_map_of_ones_neither_drops_nor_increases_confidence():
    """E = 1 x image = the image: p(E) = p0, so drop = 0 and, increase being 1[p(E) > p0]
    (strictly greater, Grad-CAM++), no increase either."""
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    p0 = _mean_scorer(x, None)
    drop, inc = confidence_change(
        _mean_scorer, x, torch.ones(2, 4, 4), torch.zeros(2, dtype=torch.long), p0
    )
    assert drop.tolist() == [0.0, 0.0] and inc.tolist() == [0.0, 0.0]


def _zero_fill(calls):
    """An `impute` stand-in that records the removed masks and fills them with 0 (no noise)."""

    def fake(images, removed, noise, seeds):
        calls.append(removed.clone())
        return images.masked_fill(removed[:, None], 0.0)

    return fake


def test_road_removes_the_most_resp_least_relevant_fraction(monkeypatch):
    """Images proportional to their map, m = 0, 1/99, ..., 1 in raster order (row 0: x = m,
    row 1: x = 2 m), scored by their mean, with the removed pixels set to 0: removing fraction
    q most-relevant first leaves the 100 (1 - q) smallest values, least-relevant first the
    100 (1 - q) largest; MoRF and LeRF are the means over q = 0.1..0.9 of p - p0, p0 each row's
    mean."""
    import gradcam_fast.audit.faithfulness as faith

    calls = []
    monkeypatch.setattr(faith, "impute", _zero_fill(calls))
    m = torch.arange(100, dtype=torch.float32).div(99).view(1, 10, 10)
    x = torch.cat([m, 2 * m])[:, None].expand(2, 3, 10, 10).contiguous()
    p0 = x.mean(dim=(1, 2, 3))
    classes = torch.zeros(2, dtype=torch.long)
    morf, lerf = road(_mean_scorer, x, m.expand(2, 10, 10), classes, p0, batch_size=5)
    values = sorted(m.flatten().tolist())
    fractions = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    kept = [round(100 * (1 - q)) for q in fractions]
    want_morf = np.mean([sum(values[:k]) / 100 - 0.5 for k in kept])
    want_lerf = np.mean([sum(values[100 - k :]) / 100 - 0.5 for k in kept])
    np.testing.assert_allclose(morf.numpy(), [want_morf, 2 * want_morf], rtol=1e-5)
    np.testing.assert_allclose(lerf.numpy(), [want_lerf, 2 * want_lerf], rtol=1e-5)
    assert lerf[0].item() > morf[0].item()
    removed = torch.cat(calls)  # per row: MoRF at each q, then LeRF
    assert [int(r.sum()) for r in removed] == [100 - k for k in kept] * 4


def test_road_removes_every_pixel_tied_at_the_quantile(monkeypatch):
    """A map that is zero on half the image: a pixel is kept only when strictly below the
    (1 - q) quantile (pytorch-grad-cam's `mask < np.percentile(mask, 100 (1 - q))`). MoRF at
    q = 0.9: the 10th percentile is 0, nothing is below it, every pixel goes. LeRF at q = 0.1:
    1 - m is 1 on the zeros, its 90th percentile 1, so all 50 zeros go, not 10."""
    import gradcam_fast.audit.faithfulness as faith

    calls = []
    monkeypatch.setattr(faith, "impute", _zero_fill(calls))
    m = torch.zeros(1, 10, 10)
    m[0, 5:] = torch.arange(1, 51, dtype=torch.float32).div(50).view(5, 10)
    x = torch.ones(1, 3, 10, 10)
    road(_mean_scorer, x, m, torch.zeros(1, dtype=torch.long), torch.ones(1), fractions=[0.1, 0.9])
    morf_01, morf_09, lerf_01, lerf_09 = torch.cat(calls)
    assert int(morf_01.sum()) == 10 and morf_01[9].all()  # the top 10: the last row
    assert bool(morf_09.all())
    assert int(lerf_01.sum()) == 50 and bool(lerf_01[:5].all())
    assert int(lerf_09.sum()) == 90 and not lerf_09[9].any()  # the 10 largest stay


def test_imputation_solves_the_neighbor_average_system():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 10, generator=gen)
    removed = torch.rand(2, 12, 10, generator=gen) > 0.5
    out = impute(x, removed, noise=0.0).double()
    w = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]]).double()
    nb = torch.nn.functional.conv2d(out, w[None, None].expand(3, 1, 3, 3), padding=1, groups=3)
    total = torch.nn.functional.conv2d(torch.ones(1, 1, 12, 10).double(), w[None, None], padding=1)
    miss = removed[:, None].expand_as(out)
    assert torch.allclose(
        (nb / total)[miss], out[miss], atol=1e-6
    )  # each the mean of its neighbors
    assert torch.equal(out[~miss], x.double()[~miss])  # known pixels untouched


def test_imputation_per_image_whatever_the_batch_and_with_nothing_known():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 3, 30, 23, generator=gen)
    removed = torch.rand(4, 30, 23, generator=gen) > 0.3
    removed[2] = True  # nothing known: zeros plus the noise
    removed[3] = False  # nothing removed: the image as it is
    batch = impute(x, removed, noise=0.01, seeds=[5, 6, 7, 8])
    for i, seed in enumerate([5, 6, 7, 8]):  # the threads change nothing
        assert torch.equal(batch[i], impute(x[i : i + 1], removed[i : i + 1], 0.01, [seed])[0])
    assert batch[2].abs().max() < 0.1 and batch[2].std() > 0.005
    assert torch.equal(batch[3], x[3])


def test_dissection_ranks_every_pixel_and_separates_by_lines():
    rank = _dissection_rank(9, 14)
    assert sorted(rank.tolist()) == list(range(9 * 14))
    # the last pixels numbered are the first cut: a whole column (the box is wider than tall)
    last = np.sort(np.argsort(rank)[-9:])
    assert np.array_equal(last % 14, np.full(9, 7)) and np.array_equal(last // 14, np.arange(9))


def test_bootstrap_interval_and_refusal_of_nan():
    ci = bootstrap_mean([1.0, 2.0, 3.0, 4.0])
    assert ci["mean"] == 2.5 and 1.0 <= ci["low"] < 2.5 < ci["high"] <= 4.0 and ci["n"] == 4
    assert bootstrap_mean([0.5]) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 1}
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean([1.0, float("nan")])
    rows = [
        {"path": "a", "class": 1, "energy": 0.9},
        {"path": "b", "class": 2, "energy": 0.1},
        {"path": "c", "error": "bad"},
    ]
    s = summarize(rows, names=("x", "y", "z"))
    assert [c["name"] for c in s["classes"]] == ["z", "y"]  # worst first
    assert (s["images"], s["rows"], s["errors"]) == (2, 2, 1)
    assert s["overall"]["energy"]["mean"] == pytest.approx(0.5)


def test_bootstrap_interval_of_two_values_by_hand():
    """Resampling [0, 1] twice with replacement gives the means 0, 1/2, 1 with probabilities
    1/4, 1/2, 1/4: the 40% and 60% quantiles (level 0.2) are both 1/2."""
    assert bootstrap_mean([0.0, 1.0], level=0.2) == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 2}


def test_bootstrap_interval_follows_the_normal_approximation():
    """The bootstrap distribution of the mean of n values has variance s^2 / n (s the values'
    standard deviation, ddof=0), and is close to normal for n = 100 symmetric values: its
    (1 - level) / 2 and (1 + level) / 2 quantiles are mean -/+ z s / sqrt(n) (z = 1.960 at 95%,
    0.674 at 50%), to within 0.1 s / sqrt(n) (the Monte Carlo error with 20000 resamples is
    about 0.02 s / sqrt(n))."""
    v = np.linspace(0.0, 1.0, 100)
    se = v.std() / np.sqrt(v.size)
    for level, z in [(0.95, 1.959964), (0.5, 0.674490)]:
        ci = bootstrap_mean(v, resamples=20000, level=level)
        np.testing.assert_allclose(
            [ci["low"], ci["high"]], [0.5 - z * se, 0.5 + z * se], rtol=0, atol=0.1 * se
        )


def test_summary_means_are_means_and_skip_undefined_rows():
    """An undefined value (None: a map with no mass) is left out of its metric's mean, not
    counted as 0; a metric no row has is not reported; one image may give several rows."""
    assert bootstrap_mean([0.0, 0.0, 3.0])["mean"] == 1.0  # the mean, not the median (0)
    rows = [
        {"path": "a", "class": 0, "energy": 1.0, "pointing": 1.0},
        {"path": "a", "class": 1, "energy": None, "pointing": 0.0},
        {"path": "b", "class": 1, "energy": 0.5, "pointing": 1.0},
        {"path": "c", "error": "bad"},
    ]
    s = summarize(rows, resamples=10)
    assert (s["images"], s["rows"], s["errors"]) == (2, 3, 1)
    assert s["overall"]["energy"]["mean"] == 0.75 and s["overall"]["energy"]["n"] == 2
    assert s["overall"]["pointing"]["n"] == 3
    assert "deletion" not in s["overall"]
    by_class = {c["class"]: c for c in s["classes"]}
    assert by_class[1]["metrics"]["energy"] == {"mean": 0.5, "low": 0.5, "high": 0.5, "n": 1}


def test_classes_are_ranked_worst_first_by_each_fallback_score():
    """`rank_value`: energy where annotated, else insertion - deletion (higher is better for
    the first, lower for the second), else -drop; a class ranks by the mean over its rows, and
    classes with no score come last."""
    faithful = {"insertion": 0.8, "deletion": 0.1}  # rank 0.7
    unfaithful = {"insertion": 0.3, "deletion": 0.6}  # rank -0.3
    rows = [
        {"path": "a", "class": 0, **faithful},
        {"path": "b", "class": 1, **unfaithful},
        {"path": "c", "class": 2},  # no score at all
        {"path": "d", "class": 3, "drop": 0.9},  # rank -0.9
        {"path": "e", "class": 4, "drop": 0.05},  # rank -0.05
        {"path": "f", "class": 5, "energy": 0.0},  # energy 0 and 1: mean 0.5 ...
        {"path": "g", "class": 5, "energy": 1.0},
        {"path": "h", "class": 6, "energy": 0.4},  # ... above 0.4, though its minimum is below
    ]
    s = summarize(rows, resamples=10)
    assert [c["class"] for c in s["classes"]] == [3, 1, 4, 6, 5, 0, 2]
    ranks = [c["rank"] for c in s["classes"]]
    assert ranks[:-1] == pytest.approx([-0.9, -0.3, -0.05, 0.4, 0.5, 0.7]) and ranks[-1] is None


# faithfulness against TorchCAM and pytorch-grad-cam on a real model --------------------------


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    model = make_tiny_vgg(seed=3)
    path = export_onnx(
        model, tmp_path_factory.mktemp("audit") / "m.onnx", image_size=SIZE, validate=False
    )
    session = GradCAMSession(path, device="cpu")
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    result = session(x, None)
    classes = result.target_classes[:, 0]
    p0 = torch.softmax(result.logits, 1).gather(1, classes[:, None])[:, 0]
    return model, session, x, result.cams[:, 0], classes, p0


class _FixedCAM:
    """A TorchCAM extractor that returns given maps: the metric is compared, not the maps."""

    def __init__(self, model, cams):
        self.model, self.cams = model, cams

    def __call__(self, class_idx=None, scores=None, normalized=True, **kw):
        return [self.cams]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


@pytest.mark.parametrize("baseline", ["blur", "constant"])
def test_deletion_insertion_match_torchcam(tiny_setup, baseline):
    metrics = pytest.importorskip("torchcam.metrics")
    model, session, x, cams, classes, p0 = tiny_setup
    score = session_scorer(session, batch_size=7)
    fractions, dele, ins = deletion_insertion(
        score, x, cams, classes, p0, steps=20, baseline=baseline
    )
    ours_d, ours_i = auc(dele, fractions), auc(ins, fractions)
    for i in range(len(x)):
        metric = metrics.DeletionInsertionMetric(
            _FixedCAM(model, cams[i : i + 1]),
            lambda z: torch.softmax(z, -1),
            steps=20,
            baseline=lambda z: baseline_images(z, baseline),
        )
        metric.update(x[i : i + 1], [int(classes[i])])
        got = metric.summary()
        assert np.isclose(ours_d[i].item(), got["deletion_auc"], atol=1e-4, rtol=0), (i, got)
        assert np.isclose(ours_i[i].item(), got["insertion_auc"], atol=1e-4, rtol=0), (i, got)


def test_average_drop_and_increase_match_torchcam(tiny_setup):
    metrics = pytest.importorskip("torchcam.metrics")
    model, session, x, cams, classes, p0 = tiny_setup
    drop, inc = confidence_change(session_scorer(session, 3), x, cams, classes, p0)
    metric = metrics.ClassificationMetric(_FixedCAM(model, cams), lambda z: torch.softmax(z, -1))
    metric.update(x, [int(c) for c in classes])
    got = metric.summary()
    assert np.isclose(drop.mean().item(), got["avg_drop"], atol=1e-4, rtol=0)
    assert np.isclose(inc.mean().item(), got["conf_increase"], atol=0, rtol=0)
    assert drop.max().item() > 0  # the maps really remove evidence for some image


def test_road_matches_pytorch_grad_cam(tiny_setup):
    pytest.importorskip("scipy")
    perturb = pytest.importorskip("pytorch_grad_cam.metrics.perturbation_confidence")
    road_mod = pytest.importorskip("pytorch_grad_cam.metrics.road")
    targets_mod = pytest.importorskip("pytorch_grad_cam.utils.model_targets")
    model, session, x, cams, classes, p0 = tiny_setup
    morf, lerf = road(session_scorer(session, 16), x, cams, classes, p0, noise=0.0)
    targets = [targets_mod.ClassifierOutputSoftmaxTarget(int(c)) for c in classes]
    pct = [10, 20, 30, 40, 50, 60, 70, 80, 90]

    def averaged(kind):
        def metric(p):
            return perturb.PerturbationConfidenceMetric(
                kind(p, road_mod.NoisyLinearImputer(noise=0))
            )

        return perturb.AveragerAcrossThresholds(metric, pct)(x, cams.numpy(), targets, model)

    theirs_morf = averaged(perturb.RemoveMostRelevantFirst)
    theirs_lerf = averaged(perturb.RemoveLeastRelevantFirst)
    assert np.allclose(morf.numpy(), theirs_morf, atol=1e-4, rtol=0), (morf, theirs_morf)
    assert np.allclose(lerf.numpy(), theirs_lerf, atol=1e-4, rtol=0), (lerf, theirs_lerf)


def test_benchmark_peers_map_the_logit_and_score_the_probability(tiny_setup):
    """benchmarks.audit_speed gives TorchCAM `softmax_scores`: its extractor backpropagates the
    scores its metrics read, so they must be the softmax's values with the logit's gradient, for
    its Grad-CAM to be ours (the logit's); a plain softmax gives the probability's map."""
    methods = pytest.importorskip("torchcam.methods")
    from torchcam.metrics import _resize_cam

    from benchmarks.audit_speed import softmax_scores

    model, _, x, cams, classes, _ = tiny_setup
    logits = model(x)
    assert torch.equal(softmax_scores(logits), torch.softmax(logits, -1))
    extractor = methods.GradCAM(model, "features.7")
    try:

        def peer_maps(logits_fn):
            scores = logits_fn(model(x))
            maps = extractor([int(c) for c in classes], scores)
            up = _resize_cam(extractor.fuse_cams(maps), (SIZE, SIZE)).detach().flatten(1)
            low, high = up.min(1, keepdim=True).values, up.max(1, keepdim=True).values
            # min-max after upsampling, as ours (TorchCAM's is before: an affine difference)
            return ((up - low) / (high - low)).view_as(cams)

        assert torch.allclose(peer_maps(softmax_scores), cams, atol=1e-4)
        assert not torch.allclose(peer_maps(lambda z: torch.softmax(z, -1)), cams, atol=1e-2)
    finally:
        extractor.remove_hooks()


def test_a_raw_pixel_model_audits_like_the_float_one(tmp_path):
    """Models that take uint8 pixels get the perturbed images as pixels (rounded, clipped): the
    same metrics as the float model of the same network, to within that rounding."""
    from PIL import Image

    from gradcam_fast.audit import audit

    model = make_tiny_vgg(seed=5)
    sessions = [
        GradCAMSession(
            export_onnx(
                model, tmp_path / f"{raw}.onnx", image_size=SIZE, raw_pixels=raw, validate=False
            ),
            device="cpu",
        )
        for raw in (False, True)
    ]
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]
    boxes = [[(1, 5, 5, 30, 30)]] * 3
    float_rows, raw_rows = (audit(s, images, boxes=boxes, steps=5) for s in sessions)
    for a, b in zip(float_rows, raw_rows, strict=True):
        assert a["class"] == b["class"] == 1
        for key in ("probability", "energy", "deletion", "insertion", "drop"):
            assert np.isclose(a[key], b[key], atol=0.02, rtol=0), (key, a[key], b[key])
