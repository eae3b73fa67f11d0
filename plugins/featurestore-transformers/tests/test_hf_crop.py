"""The stored crop_box is the region of the original image the model sees.

crop_box = (left, top, right, bottom) in original pixels: the center crop's offsets in
the resized image, scaled back by original / resized size on each axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featurestore import FeatureStore
from featurestore.testing import smooth_image
from featurestore_transformers.backbone import HFPreprocessor


def test_dinov2_crop_box_of_a_64x48_image_is_the_analytic_one(fs_tiny_dinov2, tmp_path, fs_store_path):
    """Tiny DINOv2 processor: resize shortest_edge 32 (bicubic), center crop 28x28.

    64x48 (w x h): the short side h=48 becomes 32; the long side w becomes
    int(32 * 64 / 48) = int(42.67) = 42, so the resized image is 42x32.
    Center crop 28x28: left = (42 - 28) // 2 = 7, top = (32 - 28) // 2 = 2, so the crop is
    x in [7, 35), y in [2, 30) of the resized image.
    Back to original pixels: x scale 64 / 42, y scale 48 / 32 = 1.5:
      left = 7 * 64/42 = 10.667, top = 2 * 1.5 = 3, right = 35 * 64/42 = 53.333, bottom = 30 * 1.5 = 45.
    """
    img_dir = tmp_path / "one"
    img_dir.mkdir()
    Image.fromarray(smooth_image(64, 48, seed=7)).save(img_dir / "a.png")
    s = FeatureStore(fs_store_path).extract([img_dir], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    [row] = FeatureStore(fs_store_path).table(s.table).to_arrow().to_pylist()
    assert (row["width"], row["height"]) == (64, 48)
    expected = (7 * 64 / 42, 2 * 48 / 32, 35 * 64 / 42, 30 * 48 / 32)
    np.testing.assert_allclose(row["crop_box"], expected, rtol=1e-6)
    np.testing.assert_allclose(row["crop_box"], (10.6666667, 3.0, 53.3333333, 45.0), rtol=1e-6)


def _observed_crop_box(proc, img: Image.Image) -> tuple[float, float, float, float]:
    """The crop box the processor really uses, found from its own outputs.

    Run it once without the center crop (giving the resized image) and once with it; the
    crop is the only window of the resized image equal to the cropped output.
    """
    full = proc(images=img, do_center_crop=False, do_normalize=False, return_tensors="pt")["pixel_values"][0]
    crop = proc(images=img, do_normalize=False, return_tensors="pt")["pixel_values"][0]
    (rh, rw), (ch, cw) = full.shape[-2:], crop.shape[-2:]
    found = [
        (top, left)
        for top in range(rh - ch + 1)
        for left in range(rw - cw + 1)
        if torch.equal(full[:, top : top + ch, left : left + cw], crop)
    ]
    assert len(found) == 1, found
    top, left = found[0]
    w, h = img.size
    sx, sy = w / rw, h / rh
    return (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)


# Sizes chosen so the crop offset (resized - crop) / 2 is fractional in some of them:
# 53x48 resizes to 35x32 with dinov2 (35 - 28 = 7: 3.5, floored to 3 by transformers);
# 35x32 too; 30x40 resizes to 28x37 with clip (37 - 28 = 9: 4.5).
SIZES = [(64, 48), (53, 48), (48, 64), (35, 32), (30, 40), (28, 28), (100, 29), (31, 90)]


@pytest.mark.parametrize("kind", ["dinov2", "clip", "vit"])
def test_crop_box_matches_what_the_processor_does(kind, fs_tiny_model_factory):
    from transformers import AutoImageProcessor

    d = fs_tiny_model_factory(kind)
    proc = AutoImageProcessor.from_pretrained(d)
    pre = HFPreprocessor(proc)
    for i, (w, h) in enumerate(SIZES):
        img = Image.fromarray(smooth_image(w, h, seed=i))
        out = pre(img)
        assert tuple(out.pixel_values.shape) == (3, 28, 28)
        observed = _observed_crop_box(proc, img)
        np.testing.assert_allclose(out.crop_box, observed, rtol=1e-9, atol=1e-9, err_msg=f"{kind} {w}x{h}")
        left, top, right, bottom = out.crop_box
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        if kind == "vit":  # plain resize to 28x28, no crop: the whole image
            assert out.crop_box == (0.0, 0.0, float(w), float(h))


def test_crop_box_is_stored_per_image(fs_tiny_dinov2, tmp_path, fs_store_path):
    """Through the store: each row's crop_box is its own image's (53x48 has an odd offset)."""
    from transformers import AutoImageProcessor

    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    paths = {}
    for i, (w, h) in enumerate([(53, 48), (48, 64), (35, 32)]):
        paths[(w, h)] = img_dir / f"{w}x{h}.jpg"
        Image.fromarray(smooth_image(w, h, seed=30 + i)).save(paths[(w, h)], quality=95)
    s = FeatureStore(fs_store_path).extract([img_dir], backbone=f"hf:{fs_tiny_dinov2}", workers=0)
    proc = AutoImageProcessor.from_pretrained(fs_tiny_dinov2)
    rows = {Path(r["uri"]).name: r for r in FeatureStore(fs_store_path).table(s.table).to_arrow().to_pylist()}
    assert len(rows) == 3
    for (w, h), p in paths.items():
        r = rows[p.name]
        with Image.open(p) as im:
            observed = _observed_crop_box(proc, im.convert("RGB"))
        np.testing.assert_allclose(r["crop_box"], observed, rtol=1e-6)
    # 53x48 → 35x32, crop left = (35 - 28) // 2 = 3 (not round(3.5) = 4): 3 * 53 / 35
    np.testing.assert_allclose(rows["53x48.jpg"]["crop_box"][0], 3 * 53 / 35, rtol=1e-6)
