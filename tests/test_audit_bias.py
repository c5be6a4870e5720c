"""The audit finds the shark-by-the-water model: a small VGG trained where a background cue (a
red bar along the top edge) predicts classes 0 and 1 better than their shapes do ranks below
one trained on the shapes alone, on those classes, by the pointing game and by energy; on class
2, which carries no cue, the two stay close. Both are trained here (seeded, CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from gradcam_fast import GradCAMSession
from gradcam_fast.audit import audit
from gradcam_fast.audit.summary import summarize
from gradcam_fast.testing import shape_pictures, train_shapes_vgg

CUE = (0, 1)


@pytest.fixture(scope="module")
def audits():
    biased_set = shape_pictures(1024, seed=10, cue_classes=CUE, shape_noise=0.5)
    plain_set = shape_pictures(1024, seed=10)
    models = {
        "biased": train_shapes_vgg(*biased_set[:2], epochs=6),
        "unbiased": train_shapes_vgg(*plain_set[:2], epochs=6),
    }
    pictures, labels, boxes = shape_pictures(64, seed=21, cue_classes=CUE)  # the cue is there
    images = [Image.fromarray(p.numpy()) for p in pictures]
    annotated = [[(int(c), *b)] for c, b in zip(labels, boxes, strict=True)]
    out = {}
    for name, model in models.items():
        session = GradCAMSession.from_model(model, image_size=32, device="cpu")
        rows = audit(
            session,
            images,
            boxes=annotated,
            metrics=["pointing", "energy"],
            crop=False,
            tolerance=1,
        )
        assert not [r for r in rows if "error" in r]
        out[name] = {c["class"]: c["metrics"] for c in summarize(rows)["classes"]}
    return out


@pytest.mark.slow
def test_the_biased_model_ranks_below_on_the_classes_with_the_cue(audits):
    for c in CUE:
        biased, unbiased = audits["biased"][c], audits["unbiased"][c]
        assert unbiased["pointing"]["mean"] >= 0.7, unbiased
        assert biased["pointing"]["mean"] <= unbiased["pointing"]["mean"] - 0.4, (
            c,
            biased,
            unbiased,
        )
        assert biased["energy"]["mean"] <= unbiased["energy"]["mean"] - 0.15, (c, biased, unbiased)
        # the intervals do not overlap: the audit tells the two apart with confidence
        assert biased["pointing"]["high"] < unbiased["pointing"]["low"]


@pytest.mark.slow
def test_the_class_without_a_cue_stays_close(audits):
    biased, unbiased = audits["biased"][2], audits["unbiased"][2]
    assert abs(biased["pointing"]["mean"] - unbiased["pointing"]["mean"]) <= 0.25
    assert np.isfinite(biased["energy"]["mean"]) and np.isfinite(unbiased["energy"]["mean"])
