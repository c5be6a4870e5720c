"""Boxes given in the original image's pixels land where they should after resize and center
crop: the audit places each map computed on the model's S x S crop back onto the original image
(io.images.cam_to_image) before scoring it against the boxes. Checked with a stand-in session whose
map is the input's brightness, on a non-square image with a bright, off-center rectangle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gradcam_fast.audit import audit
from gradcam_fast.format.metadata import ModelMetadata
from gradcam_fast.format.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from gradcam_fast.format.result import GradCAMResult
from gradcam_fast.io.images import model_crop

S = 224
W, H = 300, 200
RECT = (170, 30, 230, 80)  # x0, y0, x1, y1: right of center, near the top


class BrightnessSession:
    """Maps = the brightness of what the model sees; class 0's logit = its mean brightness."""

    path = None
    device = torch.device("cpu")
    metadata = ModelMetadata(
        arch="brightness",
        target_layer="input",
        image_size=S,
        num_targets=1,
        num_classes=2,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights="none",
        categories=("bright", "dark"),
    )

    def __call__(self, images, targets=None, *, method=None, aug_smooth=False):
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        pixels = (torch.as_tensor(images) * std + mean).mean(dim=1)  # [B, S, S] in [0, 1]
        lo = pixels.flatten(1).min(1).values[:, None, None]
        hi = pixels.flatten(1).max(1).values[:, None, None]
        cams = ((pixels - lo) / (hi - lo).clamp_min(1e-6))[:, None]
        b = pixels.shape[0]
        logits = torch.stack([pixels.mean((1, 2)), torch.zeros(b)], 1)
        t = torch.as_tensor(targets).reshape(b, -1)[:, :1]
        return GradCAMResult(cams, cams, t, logits, pixels[:, None], None)


def _picture() -> Image.Image:
    a = np.full((H, W, 3), 20, np.uint8)
    x0, y0, x1, y1 = RECT
    a[y0:y1, x0:x1] = 250
    return Image.fromarray(a)


def test_the_rectangle_is_off_center_and_inside_the_crop():
    x0, y0, x1, y1 = model_crop(W, H, S).box()
    assert x0 <= RECT[0] and RECT[2] <= x1 and y0 <= RECT[1] and RECT[3] <= y1
    assert abs((RECT[0] + RECT[2]) / 2 - W / 2) > 40  # far from the center


@pytest.mark.parametrize("crop", [True, False])
def test_a_box_in_original_pixels_scores_on_the_object(crop):
    metrics = ["pointing", "energy", "localization"]
    rows = audit(
        BrightnessSession(), [_picture()], boxes=[[("bright", *RECT)]], metrics=metrics, crop=crop
    )
    (row,) = rows
    assert row["pointing"] == 1.0
    assert row["energy"] > 0.9, row
    assert row["box_iou"] >= 0.8 and row["localization"] == 1.0, row
    # the map's box is the rectangle, in original pixels, to within the resampling blur
    assert np.allclose(row["map_box"], RECT, atol=4), row["map_box"]


def test_a_box_elsewhere_in_the_image_scores_zero():
    mirrored = (W - RECT[2], RECT[1], W - RECT[0], RECT[3])  # same size, left of center
    rows = audit(
        BrightnessSession(),
        [_picture()],
        boxes=[[("bright", *mirrored)]],
        metrics=["pointing", "energy", "localization"],
    )
    (row,) = rows
    assert row["pointing"] == 0.0 and row["energy"] < 0.05 and row["localization"] == 0.0, row


def test_the_part_of_a_box_the_crop_cut_off_gets_no_map():
    """A box over the left edge, which the center crop removes: no mass there (NaN -> 0)."""
    rows = audit(BrightnessSession(), [_picture()], boxes=[[(0, 0, 0, 40, H)]], metrics=["energy"])
    assert rows[0]["energy"] == 0.0


def test_localization_counts_an_iou_of_exactly_one_half_as_a_hit():
    """On a 224 x 224 picture (crop=False: no resampling) the map's box is the bright square
    (60, 60)-(120, 120), area 3600. A box twice as tall over it has IoU 3600 / 7200 = 0.5
    exactly: a hit (IoU >= 0.5, the ILSVRC rule); one pixel taller, 3600 / 7260: a miss."""
    a = np.full((S, S, 3), 20, np.uint8)
    a[60:120, 60:120] = 250
    picture = Image.fromarray(a)
    for box, iou, hit in [((60, 60, 120, 180), 0.5, 1.0), ((60, 60, 120, 181), 3600 / 7260, 0.0)]:
        (row,) = audit(
            BrightnessSession(),
            [picture],
            boxes=[[("bright", *box)]],
            metrics=["localization"],
            crop=False,
        )
        assert row["map_box"] == [60.0, 60.0, 120.0, 120.0], row
        assert row["box_iou"] == pytest.approx(iou, abs=1e-6) and row["localization"] == hit, row


def test_boxes_are_in_the_pixels_as_displayed_after_the_exif_orientation(tmp_path):
    """A JPEG stored landscape with EXIF orientation 6 is read (io.images.load_image) as the
    portrait picture a viewer shows, so boxes are in those pixels; the stored pixels' box misses."""
    shown = np.full((W, H, 3), 20, np.uint8)  # displayed portrait: H wide, W high
    box = (110, 100, 160, 150)  # displayed x0, y0, x1, y1: inside the crop, off its center
    shown[box[1] : box[3], box[0] : box[2]] = 250
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(np.rot90(shown).copy()).save(path, exif=exif.tobytes(), quality=95)
    stored = (box[1], H - box[2], box[3], H - box[0])  # the same rectangle in the stored pixels
    assert Image.open(path).size == (W, H)
    metrics = ["pointing", "energy"]
    (row,) = audit(BrightnessSession(), [path], boxes=[[("bright", *box)]], metrics=metrics)
    assert row["pointing"] == 1.0 and row["energy"] > 0.7, row  # JPEG ringing: not 0.9
    (row,) = audit(BrightnessSession(), [path], boxes=[[("bright", *stored)]], metrics=metrics)
    assert row["energy"] < 0.1, row
