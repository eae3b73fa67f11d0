"""Preprocessing is timm's own eval transform; the crop box is the region that transform keeps.

test_resnet's config: input 160x160, crop_pct 0.95, so the shorter side is resized to
floor(160 / 0.95) = 168 and the center 160x160 is cropped. torchvision's center crop offset
is ``int(round((resized - 160) / 2))`` with Python's round, which rounds halves to even.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from featurestore.api import create_backbone
from featurestore.testing import smooth_image
from featurestore_timm.preprocess import TimmPreprocessor, crop_box

# (w, h): landscape, portrait, square, a 14.5 offset (rounded down to 14) and a 35.5 (up to 36)
SIZES = [(64, 48), (48, 64), (50, 50), (45, 40), (55, 40), (40, 55), (300, 170), (7, 3)]


@pytest.fixture(scope="module")
def resnet(fs_tiny_timm_resnet):
    return create_backbone("timm:test_resnet", weights=str(fs_tiny_timm_resnet))


def observed_crop_box(transform, img: Image.Image) -> tuple[float, float, float, float]:
    """The crop the transform really takes: the one window of its resized image equal to its crop."""
    resize, center_crop = transform.transforms[0], transform.transforms[1]
    resized = resize(img)
    full, crop = np.asarray(resized), np.asarray(center_crop(resized))
    (rh, rw), (ch, cw) = full.shape[:2], crop.shape[:2]
    found = [(t, left) for t in range(rh - ch + 1) for left in range(rw - cw + 1) if np.array_equal(full[t : t + ch, left : left + cw], crop)]
    assert len(found) == 1, found
    top, left = found[0]
    w, h = img.size
    return (left * w / rw, top * h / rh, (left + cw) * w / rw, (top + ch) * h / rh)


def test_preprocess_spec_is_timms_data_config(resnet):
    spec = resnet.preprocess_spec()
    assert spec["data_config"] == {
        "crop_mode": "center",
        "crop_pct": 0.95,
        "input_size": [3, 160, 160],
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    assert spec["library"] == "timm"


def test_crop_box_matches_what_the_transform_does(resnet):
    pre = resnet.preprocessor()
    for i, (w, h) in enumerate(SIZES):
        img = Image.fromarray(smooth_image(w, h, seed=i))
        out = pre(img)
        assert out.pixel_values.dtype == torch.float32 and tuple(out.pixel_values.shape) == (3, 160, 160)
        np.testing.assert_allclose(out.crop_box, observed_crop_box(pre.transform, img), rtol=1e-9, err_msg=f"{w}x{h}")
        left, top, right, bottom = out.crop_box
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
    # 45x40 → 189x168, offset 14.5 → 14; 55x40 → 231x168, offset 35.5 → 36 (round half to even)
    assert crop_box((45, 40), resnet.data_config)[0] == 14 * 45 / 189
    assert crop_box((55, 40), resnet.data_config)[0] == 36 * 55 / 231


def test_crop_box_of_squash_and_unmodelled_modes():
    cfg = {"input_size": [3, 32, 32], "crop_pct": 0.8, "crop_mode": "squash", "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    # squash: resize to 40x40 whatever the aspect, crop the center 32x32: offset 4 on both axes
    assert crop_box((80, 20), cfg) == (4 * 80 / 40, 4 * 20 / 40, 36 * 80 / 40, 36 * 20 / 40)
    pre = TimmPreprocessor(cfg)
    img = Image.fromarray(smooth_image(80, 20, seed=1))
    np.testing.assert_allclose(pre(img).crop_box, observed_crop_box(pre.transform, img))
    for other in ({"crop_mode": "border"}, {"crop_pct": 1.2}, {"input_size": [3, 32, 48]}):
        assert all(math.isnan(v) for v in crop_box((80, 20), {**cfg, "crop_mode": "center", **other})), other


def test_preprocessor_pickles_small_and_gives_the_same_pixels(resnet):
    pre = resnet.preprocessor()
    img = Image.fromarray(smooth_image(64, 48, seed=3))
    before = pre(img)  # builds the transform
    blob = pickle.dumps(pre)
    assert len(blob) < 1000  # the data config only, not the transform
    after = pickle.loads(blob)(img)
    assert torch.equal(before.pixel_values, after.pixel_values) and before.crop_box == after.crop_box
